"""`examples/pretrain.py` under `accelerate launch`, recording the `sample_index` of every training batch of
this process into `$STREAMING_SEEN_DIR/rank<process index>.json` (a list per step) for
tests/test_streaming_pretrain.py."""

import json
import os
import runpy
import sys
from pathlib import Path

from mage_hf.training.streaming import StreamingPretrainingTrainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"
seen: list[list[int]] = []
compute_loss = StreamingPretrainingTrainer.compute_loss


def recording_compute_loss(self, model, inputs, *args, **kwargs):
    seen.append(inputs["sample_index"].tolist())
    output = Path(os.environ["STREAMING_SEEN_DIR"])
    output.mkdir(parents=True, exist_ok=True)
    (output / f"rank{self.args.process_index}.json").write_text(json.dumps(seen))
    return compute_loss(self, model, inputs, *args, **kwargs)


StreamingPretrainingTrainer.compute_loss = recording_compute_loss
sys.argv = [str(EXAMPLE), *sys.argv[1:]]
runpy.run_path(str(EXAMPLE), run_name="__main__")
