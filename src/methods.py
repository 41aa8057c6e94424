"""Each training method declared once, as data; one loop (``src/engine.py``) runs them all.

The six methods of the paper's Table 1 (plus SR pre-training) differ only in what the recogniser
sees, where each network starts, which networks train, and which step updates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

View = Literal["hr", "lr_up", "sr"]
Step = Literal["pixel", "recogniser", "critic", "joint", "alternate"]


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # as the paper writes it
    view: View  # the image the recogniser sees, in training and at test: HR, bilinear-upsampled LR, or SR(LR)
    step: Step  # which update rule trains it (src/engine.py STEPS)
    trains_sr: bool
    trains_rec: bool
    sr_from_pretrained: bool = False  # SR starts from the pretrain_sr stage
    # ... or, when ``sr.init`` names released DIV2K weights, from those (the paper starts T->S, S+T and SR4IR
    # from DIV2K weights and only S->T from the task-pretrained SR; without sr.init pretrain_sr stands in)
    sr_from_div2k: bool = False
    rec_from: str | None = None  # the recogniser starts from this method's trained recogniser
    uses_rec: bool = True


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sr_pretrain", "SR", "sr", "pixel", trains_sr=True, trains_rec=False, uses_rec=False),
        Method("h2t", "H2T", "hr", "recogniser", trains_sr=False, trains_rec=True),
        Method("l2t", "L2T", "lr_up", "recogniser", trains_sr=False, trains_rec=True),
        Method("s2t", "S→T", "sr", "recogniser", trains_sr=False, trains_rec=True, sr_from_pretrained=True),
        Method("t2s", "T→S", "sr", "critic", trains_sr=True, trains_rec=False, sr_from_pretrained=True, rec_from="h2t",
               sr_from_div2k=True),
        Method("joint", "S+T", "sr", "joint", trains_sr=True, trains_rec=True, sr_from_pretrained=True, sr_from_div2k=True),
        Method("sr4ir", "SR4IR", "sr", "alternate", trains_sr=True, trains_rec=True, sr_from_pretrained=True,
               sr_from_div2k=True),
    )
}

# The methods of the paper's Table 1, in its row order.
TABLE_METHODS = ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir")
