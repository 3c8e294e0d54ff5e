"""How far the outline of a lesion model's *mask* tells a lobulated border from a smooth one: a linear probe.

For each lesion with a border tag (the simulator leaves it uncertain below 10 mm) on the evaluation images of
the test volumes, the outline descriptor of the tag head (``medmtl.models.lesion_tag_head.contour_spectrum``:
the mean and the Fourier magnitudes over the angle of a map sampled on four rings about the lesion's true
box, here at ``--angles`` angles) is taken from three maps at full resolution:

- the true instance mask (what the descriptor can do with a perfect outline);
- the network's mask probability (what a tag head that read the mask head's output could use);
- the key image itself (the centre slice of the context, as normalised for the network).

A logistic regression per map (standardised inputs, scikit-learn's default L2) is fitted on the lesions of
``--fit-volumes`` sagittal volumes drawn with another seed (seed 1 of the validation stream: lesions that
neither training nor the test set contains) and scored by its AUC on the test lesions. The network's own
``lobulated`` probability on the same lesions (its detection matched at IoU >= 0.5, as ``medmtl test``)
is the row to beat.

    .venv/bin/python benchmarks/lesion_border_probe.py --checkpoint models/lesion_mni/model.ckpt
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from lesion_sizes import held_out_parser, lesion_options
from lesion_tags import match_detections
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medmtl.data.lesion_data import lesion_dataset
from medmtl.data.lesion_dataset import collate_lesion_samples
from medmtl.inference import load_network
from medmtl.keys import Keys
from medmtl.metrics.tag_metrics import tag_auc
from medmtl.models.lesion_decode import decode_detections
from medmtl.models.lesion_tag_head import contour_spectrum

MAPS = ("true mask", "predicted mask", "image")


def border_features(net, dataset, angles: int, batch_size: int = 8):
    """Per lesion with a border label: (lobulated (N,), descriptors {map: (N, D)}, the network's lobulated
    probability (N,), NaN where no detection matched)."""
    lobe = list(net.tag_names).index("lobulated")
    labels, network = [], []
    features: dict[str, list[np.ndarray]] = {name: [] for name in MAPS}
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate_lesion_samples(
                [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            )
            out = net.forward_batch(batch)
            detections = decode_detections(out, batch[Keys.CONTEXT].shape[-2:])
            probability = out.mask.float().sigmoid()
            centre_slice = batch[Keys.CONTEXT][:, batch[Keys.CONTEXT].shape[1] // 2]
            for b, (boxes, tags, found) in enumerate(zip(batch[Keys.BOXES], batch[Keys.TAGS], detections)):
                boxes, tags = torch.as_tensor(boxes).float().reshape(-1, 4), torch.as_tensor(tags).float()
                keep = ~tags[:, lobe].isnan()
                if not keep.any():
                    continue
                boxes, masks = boxes[keep], torch.as_tensor(batch[Keys.MASKS][b])[keep].float()
                centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).T[None]  # (1, 2, N)
                extents = (boxes[:, 2:] - boxes[:, :2]).T[None]
                own = contour_spectrum(  # each lesion's own true mask, one box per map
                    masks[:, None], centres.permute(2, 1, 0), extents.permute(2, 1, 0), angles=angles
                )
                features["true mask"].append(own[:, :, 0].numpy())
                for name, image in (("predicted mask", probability[b]), ("image", centre_slice[b, None])):
                    spectra = contour_spectrum(image[None], centres, extents, angles=angles)
                    features[name].append(spectra[0].T.numpy())
                labels.append(tags[keep, lobe].numpy() > 0.5)
                det, gt = match_detections(found, boxes.numpy().astype(np.float64))
                mine = np.full(len(boxes), np.nan)
                mine[gt] = found.tags[det, lobe]
                network.append(mine)
    return (
        np.concatenate(labels),
        {name: np.concatenate(parts) for name, parts in features.items()},
        np.concatenate(network),
    )


def main() -> None:
    parser = held_out_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--angles", type=int, default=32)
    parser.add_argument("--fit-volumes", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_network(args.checkpoint)[0].eval()
    options = lesion_options(args.config)
    fit_options = dataclasses.replace(options, num_volumes={**options.num_volumes, "val": args.fit_volumes})

    def dataset(opts, split, seed):
        return lesion_dataset(opts, split, seed, None, net.num_slices, net.interval_mm, net.window)

    fit_y, fit_x, _ = border_features(net, dataset(fit_options, "val", 1), args.angles)
    test_y, test_x, network = border_features(net, dataset(options, args.split, 0), args.angles)
    print(
        f"{args.checkpoint}: fitted on {len(fit_y)} lesions ({int(fit_y.sum())} lobulated), scored on "
        f"{len(test_y)} {args.split} lesions ({int(test_y.sum())} lobulated), {args.angles} angles"
    )
    print("| border from | test AUC, lobulated |\n|---|---|")
    for name in MAPS:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(fit_x[name], fit_y)
        score = probe.decision_function(test_x[name])
        auc = tag_auc(score[:, None], test_y[:, None])[0]
        print(f"| linear probe on the {name}'s contour spectra | {auc:.3f} |")
    found = ~np.isnan(network)
    auc = tag_auc(network[found, None], test_y[found, None])[0]
    print(f"| the network's lobulated tag ({int(found.sum())} matched lesions) | {auc:.3f} |")


if __name__ == "__main__":
    main()
