"""`unet_hf` at wider levels, for bench/quality.py and bench/variants.py (not registered in mixsep).

    python bench/hf_widths.py quality --data-root ../shared/data --model unet_hf_wide --minutes 15 --holdout 1000 --cpu-bf16
    python bench/hf_widths.py variants --data-root ../shared/data --run RUN     # the validation split

Registers ``unet_hf_wide`` (``unet_digit_rich``'s widths, 32 to 256) and ``unet_hf_mid`` (24 to 192):
``unet_hf``'s inputs, head and ``DigitSpace``, with ``unet_digit_rich``'s recipe (lr 3e-3), then runs
the named bench script with the remaining arguments. On a CPU that computes bf16 itself the wide
levels cost less against the narrow ones than in fp32; docs/benchmarks.md ("bf16 on a CPU with AMX")
has the 15-minute comparison, a draw.
"""
from __future__ import annotations

import sys

WIDTHS = {"unet_hf_wide": (32, 64, 128, 256), "unet_hf_mid": (24, 48, 96, 192)}


def register() -> None:
    # imported here: --help and a missing script name answer without loading torch (seconds)
    import mixsep  # noqa: F401  first, before torch: how its threads wait
    from mixsep import config
    from mixsep.model import MODELS
    from variants import _rich

    for name, widths in WIDTHS.items():
        MODELS[name] = _rich(widths, features="hf", digit_space=True)  # unet_hf's class, these widths
        config.RECIPES[name] = dict(config.RECIPES["unet_digit_rich"])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in ("quality", "variants"):
        print("error: name the bench script first: quality or variants, then its arguments.", file=sys.stderr)
        return 2
    register()  # before quality.py is imported: its presets are read from RECIPES then
    tool = __import__(argv[0])
    return tool.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
