"""Turn a Megatron-LM ``--ckpt-format torch`` save into what `bandmate convert` reads.

    python packaging/megatron/to_safetensors.py SAVE_DIR OUT_DIR

Run it once, in the environment where Megatron-LM trained the model (the training container):
it opens Megatron's own pickle there, with ``torch.load(weights_only=True)`` (tensors and
plain containers only; Megatron's args Namespace allowed), and writes ``OUT_DIR/model.safetensors``
(the megatron-core state dict) and ``OUT_DIR/megatron_args.json``. bandmate itself only reads
those two files: no model it loads is ever unpickled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def extract(save: Path, out: Path) -> Path:
    import torch
    from bandmate.training.megatron_convert import ARGS_JSON, _find_pt
    from safetensors.torch import save_file

    pt = _find_pt(Path(save))
    torch.serialization.add_safe_globals([argparse.Namespace])
    ck = torch.load(str(pt), map_location="cpu", weights_only=True)
    sd = ck.get("model", ck)
    sd = {k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}
    args = ck.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"))
    plain = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool, type(None)))}
    (out / ARGS_JSON).write_text(json.dumps(plain, indent=1, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("save", type=Path, help="Megatron-LM save folder, iter_* folder or .pt file")
    ap.add_argument("out", type=Path, help="folder to write (model.safetensors + args JSON)")
    a = ap.parse_args(argv)
    try:
        print(extract(a.save, a.out))
    except (ValueError, FileNotFoundError) as e:
        print(f"to_safetensors: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
