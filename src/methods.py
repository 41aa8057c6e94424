"""Each training method declared once, as data; one loop (``src/loop.py``) runs them all.

The six methods of the paper's Table 1 (plus SR pre-training) differ only in what the recogniser
sees, where each network starts, which networks train, and which update rule (``src/steps.py``) trains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

View = Literal["hr", "lr_up", "sr"]
Step = Literal["pixel", "recogniser", "sr_via_task", "joint", "alternate"]
# Where the SR network's weights start:
#   random       a fresh network (SR pre-training itself; it loads sr.init when that names released weights)
#   pretrain_sr  the pretrain_sr stage's output (S->T: the SR network pre-trained on this dataset)
#   div2k        the released DIV2K weights that sr.init names, as the paper; without sr.init the pretrain_sr
#                stage's output stands in for them
SRStart = Literal["random", "pretrain_sr", "div2k"]


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # as the paper writes it
    view: View  # the image the recogniser sees, in training and at test: HR, bilinear-upsampled LR, or SR(LR)
    step: Step  # which update rule trains it (src/steps.py STEPS)
    trains_sr: bool
    trains_rec: bool
    sr_start: SRStart = "random"
    rec_from: str | None = None  # the recogniser starts from this method's trained recogniser
    uses_rec: bool = True
    # The SR step adds the TDP loss once train.sr4ir.warmup_epochs are over; the schedules restart then.
    tdp: bool = False

    @property
    def reads_pretrained_sr(self) -> bool:
        """Whether the method can start from the pretrain_sr stage's output (a dependency of its stage)."""
        return self.sr_start in ("pretrain_sr", "div2k")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("sr_pretrain", "SR", "sr", "pixel", trains_sr=True, trains_rec=False, uses_rec=False),
        Method("h2t", "H2T", "hr", "recogniser", trains_sr=False, trains_rec=True),
        Method("l2t", "L2T", "lr_up", "recogniser", trains_sr=False, trains_rec=True),
        Method("s2t", "S→T", "sr", "recogniser", trains_sr=False, trains_rec=True, sr_start="pretrain_sr"),
        Method("t2s", "T→S", "sr", "sr_via_task", trains_sr=True, trains_rec=False, sr_start="div2k", rec_from="h2t"),
        Method("joint", "S+T", "sr", "joint", trains_sr=True, trains_rec=True, sr_start="div2k"),
        Method("sr4ir", "SR4IR", "sr", "alternate", trains_sr=True, trains_rec=True, sr_start="div2k", tdp=True),
    )
}

# The methods of the paper's Table 1, in its row order.
TABLE_METHODS = ("h2t", "l2t", "s2t", "t2s", "joint", "sr4ir")
