"""Fixtures of the quickstart tests (tests/quickstart/), from the dataset's own code:

    truth.png       a 10x10 sheet of rendered 64x64 scenes (tools/quickstart/shapes.py), the
                    ground truth the test classifier is checked on
    truth.json      per cell, row-major: the scene (size, color, shape, position, background)
    held_out.json   the prompt-adherence test's prompts: 48 held-out scenes (never drawn in
                    training) and their full captions, in a seeded order
    tokens.json     60 captions (the empty one first) with the ids the trainer fed the encoders
                    (tools/quickstart/vocab.py), to check weft's tokenizers against

    python3 tools/quickstart/fixtures.py            # rewrites tests/fixtures/quickstart/
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import shapes  # noqa: E402
import vocab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "quickstart"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from PIL import Image

    gen = torch.Generator().manual_seed(5)
    scenes = list(shapes.all_scenes())
    pick = torch.randperm(len(scenes), generator=gen)[:100].tolist()
    truth = [scenes[i] for i in pick]
    img = shapes.to_uint8(shapes.render(truth, gen))
    sheet = img.reshape(10, 10, 64, 64, 3).permute(0, 2, 1, 3, 4).reshape(640, 640, 3).numpy()
    Image.fromarray(sheet).save(os.path.join(args.out, "truth.png"), optimize=True)
    with open(os.path.join(args.out, "truth.json"), "w") as f:
        json.dump([dict(zip(("size", "color", "shape", "position", "background"), s)) for s in truth], f, indent=0)

    held = shapes.held_out_scenes()
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(11))[:48].tolist()
    prompts = [dict(caption=shapes.caption(*held[i]), color=held[i][1], shape=held[i][2], background=held[i][4])
               for i in order]
    with open(os.path.join(args.out, "held_out.json"), "w") as f:
        json.dump(prompts, f, indent=1)

    captions = shapes.all_captions()
    chosen = [captions[0]] + [captions[i] for i in
                              torch.randperm(len(captions) - 1, generator=torch.Generator().manual_seed(3))[:59].add(1).tolist()]
    tokens = vocab.tokenize_all(chosen)
    with open(os.path.join(args.out, "tokens.json"), "w") as f:
        json.dump([dict(caption=c, **tokens[c]) for c in chosen], f)
    print(f"wrote {args.out}: 100 truth scenes, {len(prompts)} held-out prompts, {len(chosen)} tokenized captions")


if __name__ == "__main__":
    main()
