"""Random crops seeded by (seed, epoch, utterance): new every epoch, the same on resume.

fairseq's audio datasets crop utterances longer than `max_sample_size` in `collater`, with
numpy's global RNG. `EpochSeededCrops` seeds each batch's crops from the seed, the epoch and the
batch's first utterance instead, so a run resumed mid-epoch crops as the uninterrupted one did.

The epoch has to reach the data loader's workers. fairseq keeps one DataLoader with persistent
workers for the whole run (`EpochBatchIterator`, `reuse_dataloader`), so an epoch set on the
dataset in the main process (`set_epoch`) never reaches the workers' copies; the batch
sampler's index lists do, every epoch. `tag_with_epoch` makes them (epoch, index) pairs, with
the epoch the main process's dataset was given: fairseq sets it before making each epoch's
batches (and a resumed epoch's remaining ones), and leaves it alone for validation, whose crops
therefore stay the same from one validation to the next.
"""
from __future__ import annotations

from fairseq.data import BaseWrapperDataset, FairseqDataset, data_utils, iterators


class EpochSeededCrops(BaseWrapperDataset):
    """Takes (epoch, index) pairs (plain indices too: fairseq's dummy batch) and seeds each batch's crops."""

    def __init__(self, dataset, seed: int, max_sample_size: int):
        super().__init__(dataset)
        self.seed, self.max_sample_size = seed, max_sample_size
        self.epoch = 1

    def set_epoch(self, epoch):
        self.epoch = epoch
        super().set_epoch(epoch)

    def with_epoch(self, batches):
        return [[(self.epoch, i) for i in batch] for batch in batches]

    def __getitem__(self, index):
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        return {**self.dataset[index], "epoch": epoch}

    def collater(self, samples):
        if not samples:
            return self.dataset.collater(samples)
        with data_utils.numpy_seed(self.seed, samples[0]["epoch"], samples[0]["id"]):
            return self.dataset.collater(samples)

    # With padding, fairseq counts an utterance's full length against max_tokens, though the
    # collater crops it to max_sample_size: count what the batch holds.
    def num_tokens(self, index):
        return min(self.dataset.num_tokens(index), self.max_sample_size)

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        return FairseqDataset.batch_by_size(self, indices, max_tokens, max_sentences, required_batch_size_multiple)


class _EpochTaggedIterator(iterators.EpochBatchIterator):
    def ordered_batches(self, epoch, fix_batches_to_gpus, shuffle):
        return self.dataset.with_epoch(super().ordered_batches(epoch, fix_batches_to_gpus, shuffle))


def tag_with_epoch(itr):
    """fairseq's iterator over an `EpochSeededCrops`, handing its data loader (epoch, index) pairs.
    Every batch list the data loader gets (each epoch's, a resumed epoch's rest) comes from
    `ordered_batches`."""
    if type(itr) is iterators.EpochBatchIterator and isinstance(itr.dataset, EpochSeededCrops):
        itr.__class__ = _EpochTaggedIterator
    return itr
