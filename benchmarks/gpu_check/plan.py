"""The sizes of a full CUDA run (Plan()) and of the quick CPU run (Plan.make(device, quick=True)), and the
parts' names (the keys of gpu_check.json's "parts")."""
from __future__ import annotations

import dataclasses
from typing import Optional

PART_NAMES = {"1": "1_loss_postprocess", "2": "2_train_step", "3": "3_input_pipeline", "4": "4_packing",
              "5": "5_bccd_training"}


@dataclasses.dataclass
class Plan:
    device: str = "cuda"
    quick: bool = False
    deadline_s: float = 465.0          # whole script, from the start of the process
    # part 1
    p1_batch: int = 32
    p1_reps: int = 20
    p1_cap_s: float = 60.0
    # part 2
    p2_size: int = 300                 # torchvision's VGG16 SSD takes >= 268 px
    p2_batches: tuple = (32, 64)
    p2_warmup: int = 5
    p2_iters: int = 20
    p2_cap_s: float = 120.0
    compile_backend: str = "inductor"
    compile_batches: tuple = (64, 32)  # largest first: the most telling figure if time runs short
    compile_min_s: float = 45.0        # do not start a compile with less time than this left
    compile_cap_s: float = 200.0
    # part 3
    p3_size: int = 300
    p3_workers: tuple = (1, 8, 16)
    p3_batch: int = 32
    p3_seconds: float = 5.0
    p3_cap_s: float = 75.0
    # part 4
    p4_procs: tuple = (1, 2, 4)
    p4_batch: int = 16
    p4_seconds: float = 15.0
    p4_warmup: int = 5
    p4_loader_workers: int = 3
    p4_threads: int = 2
    p4_image_size: Optional[int] = None   # None: the config's 320
    p4_cap_s: float = 160.0
    p4_ready_timeout_s: float = 120.0
    # part 5
    p5_budget_s: float = 120.0
    p5_workers: int = 8
    p5_batch: Optional[int] = None        # None: the config's 8
    p5_image_size: Optional[int] = None
    p5_extra_s: float = 90.0             # setup + final val evaluation + test evaluation
    synth_images: int = 300

    @classmethod
    def make(cls, device: str, quick: bool) -> "Plan":
        if not quick:
            return cls(device=device)
        return cls(device=device, quick=True, deadline_s=300.0,
                   p1_batch=2, p1_reps=3, p1_cap_s=30.0,
                   # torchvision's VGG16 SSD needs >= 268 px, where a CPU step is slow: batch 1
                   p2_size=268, p2_batches=(1,), p2_warmup=0, p2_iters=1, p2_cap_s=60.0,
                   compile_backend="aot_eager" if device == "cpu" else "inductor", compile_batches=(1,),
                   compile_min_s=5.0, compile_cap_s=60.0,
                   p3_size=128, p3_workers=(1, 2), p3_batch=2, p3_seconds=0.5, p3_cap_s=30.0,
                   p4_procs=(1, 2), p4_batch=2, p4_seconds=1.0, p4_warmup=1, p4_loader_workers=1, p4_threads=1,
                   p4_image_size=96, p4_cap_s=60.0, p4_ready_timeout_s=60.0,
                   p5_budget_s=3.0, p5_workers=1, p5_batch=2, p5_image_size=96, p5_extra_s=40.0,
                   synth_images=40)
