"""Corpus preparation: audio checks, Kaldi data dirs, fairseq manifests, corpus builders."""
