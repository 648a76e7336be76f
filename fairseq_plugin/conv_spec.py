"""`conv_feature_layers`: the CNN front end's shape, read without running it.

fairseq writes the front end as a Python expression, e.g. HuBERT Base's
`[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2`, and fairseq's `HubertModel`, its wav2vec 2.0
and S3PRL's `hubert_local` pass it to `eval()`. It comes from a checkpoint, so a downloaded file
could put any code there. `parse` accepts only the grammar fairseq writes:

    spec  := term ('+' term)*
    term  := list ('*' int)?  |  int '*' list
    list  := '[' conv (',' conv)* ','? ']'
    conv  := '(' int ',' int ',' int ')'      (channels, kernel, stride: positive)

and everything that reads a checkpoint here calls `check` before fairseq or S3PRL see it.
"""
from __future__ import annotations

import ast

Conv = tuple[int, int, int]


class ConvSpecError(ValueError):
    """A `conv_feature_layers` string outside fairseq's grammar."""


def _int(node: ast.AST, text: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value > 0:
        return node.value
    raise ConvSpecError(f"conv_feature_layers={text!r}: expected a positive integer, found {ast.unparse(node)!r}")


def _conv_list(node: ast.AST, text: str) -> list[Conv]:
    if not isinstance(node, ast.List) or not node.elts:
        raise ConvSpecError(f"conv_feature_layers={text!r}: expected a list of (channels, kernel, stride), "
                            f"found {ast.unparse(node)!r}")
    convs = []
    for elt in node.elts:
        if not isinstance(elt, ast.Tuple) or len(elt.elts) != 3:
            raise ConvSpecError(f"conv_feature_layers={text!r}: {ast.unparse(elt)!r} is not (channels, kernel, stride)")
        convs.append(tuple(_int(v, text) for v in elt.elts))
    return convs


def _evaluate(node: ast.AST, text: str) -> list[Conv]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _evaluate(node.left, text) + _evaluate(node.right, text)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        if isinstance(node.left, ast.List):
            return _conv_list(node.left, text) * _int(node.right, text)
        return _int(node.left, text) * _conv_list(node.right, text)
    return _conv_list(node, text)


def parse(text: str) -> list[Conv]:
    """The (channels, kernel, stride) of each conv layer, or ConvSpecError; never runs the text."""
    if not isinstance(text, str):
        raise ConvSpecError(f"conv_feature_layers must be a string, found {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConvSpecError(f"conv_feature_layers={text!r}: not fairseq's list syntax ({exc.msg})") from None
    return _evaluate(tree.body, text)


def check(model_cfg, source: str) -> None:
    """Refuse a model config whose `conv_feature_layers` is not fairseq's grammar, naming `source`."""
    text = model_cfg.get("conv_feature_layers") if hasattr(model_cfg, "get") else getattr(
        model_cfg, "conv_feature_layers", None)
    if text is None:
        return
    try:
        parse(text)
    except ConvSpecError as exc:
        raise ConvSpecError(f"{source}: {exc}; refused before anything evaluates it") from None
