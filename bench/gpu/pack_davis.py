"""Pack the DAVIS development videos small enough to travel to a GPU machine (<= 64 MiB a call).

Frames: every frame resized (INTER_AREA) to ``--height`` (aspect kept) as WebP; masks: one
``.npz`` per sequence of bit-packed full-resolution boolean masks (the ground truth stays at
480p for evaluation). Nothing here is committed: the output folder is git-ignored.

    python bench/gpu/pack_davis.py --root ../shared/datasets/davis2016-train --out .gpu/b/davis240 \
        --masks-out .gpu/a/davis_masks
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True, help="frames folder (<seq>/<frame>.webp)")
    ap.add_argument("--masks-out", default=None, help="masks folder (<seq>.npz)")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--sequences", nargs="*", default=None)
    a = ap.parse_args()
    root = Path(a.root)
    seqs = a.sequences or (root / "sequences.txt").read_text().split()
    for s in seqs:
        imgs = sorted((root / "JPEGImages/480p" / s).glob("*.jpg"))
        od = Path(a.out) / s
        od.mkdir(parents=True, exist_ok=True)
        for p in imgs:
            im = cv2.imread(str(p))
            h, w = im.shape[:2]
            im = cv2.resize(im, (round(w * a.height / h), a.height), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(od / (p.stem + ".webp")), im, [cv2.IMWRITE_WEBP_QUALITY, a.quality])
        if a.masks_out:
            ms = np.stack([cv2.imread(str(root / "Annotations/480p" / s / (p.stem + ".png")), 0) > 127
                           for p in imgs])
            Path(a.masks_out).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(Path(a.masks_out) / f"{s}.npz", bits=np.packbits(ms, axis=-1),
                                shape=np.array(ms.shape))
        print(s, len(imgs), flush=True)


if __name__ == "__main__":
    main()
