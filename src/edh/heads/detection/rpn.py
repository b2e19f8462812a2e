"""Region Proposal Network (Ren et al. 2015, "Faster R-CNN"), and the ``rpn`` head built on it.

`RegionProposalNetwork` follows torchvision's ``RegionProposalNetwork`` step for step (same
anchors, top-k per level, box coding, clipping, per-level NMS, matching and sampling), so it
gives the same proposals from the same weights; it differs in cost only: anchors are cached per
input size, and only the top-k anchors of each level are decoded, not all of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from edh.core.features import FeatureSpec
from edh.heads.detection.base import DetectionHead, Detections
from edh.layers.conv import ConvNormAct
from edh.ops.anchors import AnchorGrid
from edh.ops.boxes import BoxCoder, DetectionTargets
from edh.ops.matching import BalancedPositiveNegativeSampler, Matcher, match_boxes
from edh.core.registry import register_head


class RPNConv(nn.Module):
    """The RPN's layers (torchvision's ``RPNHead``, same parameter names): a shared 3x3 conv + ReLU,
    then per anchor an objectness logit and four box deltas.

    Shapes: ``[(B, C, H_i, W_i)]`` -> objectness ``[(B, A, H_i, W_i)]``, deltas ``[(B, 4A, H_i, W_i)]``.
    """

    def __init__(self, channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        self.conv = nn.Sequential(*[ConvNormAct(channels, channels, 3, norm=False) for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        objectness, deltas = [], []
        for feature in features:
            shared = self.conv(feature)
            objectness.append(self.cls_logits(shared))
            deltas.append(self.bbox_pred(shared))
        return objectness, deltas


def default_anchor_sizes(strides: tuple[int, ...]) -> list[list[float]]:
    """One anchor size per level, 8x its stride (torchvision's 32..512 on strides 4..64)."""
    return [[8.0 * s] for s in strides]


class RegionProposalNetwork(nn.Module):
    """Anchors, objectness and box deltas on every level, then the top proposals after NMS.

    Args:
        in_spec: the pyramid the RPN reads (every level has the same channels).
        anchor_sizes: anchor sizes per level in input pixels (default: 8 x stride).
        aspect_ratios: anchor height / width ratios, the same on every level.
        conv_depth: 3x3 convs before the two 1x1 outputs.
        pre_nms_top_n, post_nms_top_n: proposals kept per level before NMS and per image after it,
            as ``[training, testing]``.
        nms_thresh: IoU of the per-level proposal NMS.
        score_thresh: proposals with objectness probability below this are dropped.
        fg_iou_thresh, bg_iou_thresh: anchor IoU with a box above which it is positive, below which negative.
        batch_size_per_image, positive_fraction: anchors sampled per image for the loss, and the positive share.
    """

    def __init__(self, in_spec: FeatureSpec, anchor_sizes: list[list[float]] | None = None,
                 aspect_ratios: list[float] = (0.5, 1.0, 2.0), conv_depth: int = 1,
                 pre_nms_top_n: tuple[int, int] = (2000, 1000), post_nms_top_n: tuple[int, int] = (2000, 1000),
                 nms_thresh: float = 0.7, score_thresh: float = 0.0, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5) -> None:
        super().__init__()
        if len(set(in_spec.channels)) != 1:
            raise ValueError(f"the RPN needs the same channels on every level, got {in_spec.describe()}; put an "
                             "`fpn` decoder between the encoder and the head (source: decoder)")
        sizes = anchor_sizes or default_anchor_sizes(in_spec.strides)
        if len(sizes) != in_spec.num_levels:
            raise ValueError(f"anchor_sizes gives {len(sizes)} levels but the source has {in_spec.num_levels} "
                             f"({in_spec.describe()}); give one list of sizes per level")
        self.anchors = AnchorGrid(sizes, [list(aspect_ratios)] * len(sizes), in_spec.strides)
        if len(set(self.anchors.num_anchors)) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {[len(s) for s in sizes]}")
        self.num_anchors = self.anchors.num_anchors[0]
        self.head = RPNConv(in_spec.channels[0], self.num_anchors, conv_depth)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_thresh, self.score_thresh = nms_thresh, score_thresh
        self.min_size = 1e-3

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
        """Raw outputs and proposals.

        Returns:
            ``objectness`` ``(B, N)`` logits and ``deltas`` ``(B, N, 4)`` over all N anchors of all
            levels; ``anchors`` ``(N, 4)``; ``proposals`` and ``scores``: per image ``(P_i, 4)`` /
            ``(P_i,)`` after NMS, best first (no gradient).
        """
        objectness, deltas = self.head(features)
        batch = features[0].shape[0]
        anchors, counts = self.anchors([f.shape[-2:] for f in features], features[0].device, features[0].dtype)
        objectness = torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1) for o in objectness], dim=1)  # (B, N)
        deltas = torch.cat([d.view(batch, self.num_anchors, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
                            for d in deltas], dim=1)  # (B, N, 4)
        proposals, scores = self.propose(objectness.detach(), deltas.detach(), anchors, counts, image_size)
        return {"objectness": objectness, "deltas": deltas, "anchors": anchors, "proposals": proposals,
                "scores": scores}

    @torch.no_grad()
    def propose(self, objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, counts: list[int],
                image_size: tuple[int, int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Top ``pre_nms_top_n`` anchors per level -> decoded, clipped, filtered, NMS per level."""
        pre = self.pre_nms_top_n[0 if self.training else 1]
        post = self.post_nms_top_n[0 if self.training else 1]
        picks, levels, offset = [], [], 0
        for level, (scores, count) in enumerate(zip(objectness.split(counts, dim=1), counts)):
            index = scores.topk(min(pre, count), dim=1).indices + offset  # (B, k)
            picks.append(index)
            levels.append(torch.full((index.shape[1],), level, dtype=torch.int64, device=index.device))
            offset += count
        picks = torch.cat(picks, dim=1)  # (B, K)
        levels = torch.cat(levels)  # (K,)
        chosen = torch.gather(objectness, 1, picks).sigmoid()
        boxes = self.box_coder.decode_single(torch.gather(deltas, 1, picks[..., None].expand(-1, -1, 4)).reshape(-1, 4),
                                             anchors[picks.reshape(-1)]).view(*picks.shape, 4)
        proposals, probabilities = [], []
        for image_boxes, image_scores in zip(boxes, chosen):
            image_boxes = clip_boxes_to_image(image_boxes, image_size)
            keep = remove_small_boxes(image_boxes, self.min_size)
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], levels[keep]
            keep = torch.where(image_scores >= self.score_thresh)[0]
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], image_levels[keep]
            keep = batched_nms(image_boxes, image_scores, image_levels, self.nms_thresh)[:post]
            proposals.append(image_boxes[keep])
            probabilities.append(image_scores[keep])
        return proposals, probabilities

    def loss(self, outputs: dict[str, Any], targets: DetectionTargets) -> dict[str, torch.Tensor]:
        """Objectness BCE and smooth-L1 box loss over a balanced sample of anchors per image."""
        anchors = outputs["anchors"]
        labels, matched = [], []
        for target in targets:
            index = match_boxes(target["boxes"], anchors, self.matcher)
            label = (index >= 0).float()
            label[index == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(label)
            matched.append(index.clamp(min=0))
        positive, negative = self.sampler(labels)
        positive = torch.where(torch.cat(positive).bool())[0]
        negative = torch.where(torch.cat(negative).bool())[0]
        sampled = torch.cat([positive, negative])
        objectness = outputs["objectness"].reshape(-1)
        labels = torch.cat(labels)
        count = anchors.shape[0]
        image, anchor = positive // count, positive % count
        gt_boxes = torch.cat([t["boxes"] for t in targets])  # (G, 4) of the whole batch
        first = torch.tensor([0] + [len(t["boxes"]) for t in targets], device=anchors.device).cumsum(0)[:-1]
        matched = torch.cat(matched)[positive] + first[image]
        regression = self.box_coder.encode_single(gt_boxes[matched], anchors[anchor])
        box_loss = F.smooth_l1_loss(outputs["deltas"][image, anchor], regression, beta=1 / 9,
                                    reduction="sum") / max(1, sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return {"objectness": objectness_loss, "box": box_loss}


@register_head("rpn")
class RPNHead(DetectionHead):
    """Class-agnostic object proposals: an RPN on its own, as a one-class detector.

    Every target box counts as class 1 (``object``), whatever its label; ``predict`` returns the
    best proposals above ``score_thresh``. The same network is the first stage of ``faster_rcnn``.

    Args:
        anchor_sizes, aspect_ratios, conv_depth, pre_nms_top_n, post_nms_top_n, nms_thresh,
            fg_iou_thresh, bg_iou_thresh, batch_size_per_image, positive_fraction: as
            `RegionProposalNetwork` (``nms_thresh`` is the proposal NMS).
        score_thresh, max_detections: what ``predict`` keeps.

    Shapes: a pyramid ``[(B, C, H_i, W_i)]`` (equal C) -> `RegionProposalNetwork` outputs.
    """

    function = "region proposals: objectness + box deltas per anchor, NMS"
    export_postprocess = "single"  # proposals are per-image lists: traced at batch 1
    export_raw = False

    def __init__(self, in_spec: FeatureSpec, anchor_sizes: list[list[float]] | None = None,
                 aspect_ratios: list[float] = (0.5, 1.0, 2.0), conv_depth: int = 1,
                 pre_nms_top_n: tuple[int, int] = (2000, 1000), post_nms_top_n: tuple[int, int] = (2000, 1000),
                 nms_thresh: float = 0.7, fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5, score_thresh: float = 0.5,
                 max_detections: int = 100) -> None:
        super().__init__(in_spec, 1, ["object"], None, score_thresh, nms_thresh, max_detections)
        self.rpn = RegionProposalNetwork(in_spec, anchor_sizes, aspect_ratios, conv_depth, pre_nms_top_n,
                                         post_nms_top_n, nms_thresh, 0.0, fg_iou_thresh, bg_iou_thresh,
                                         batch_size_per_image, positive_fraction)

    def bind_data(self, info: Any) -> None:
        """Nothing to check: the RPN is class-agnostic (every box is class 1, whatever the data's labels)."""

    def select_targets(self, targets: dict[str, Any], key: str) -> DetectionTargets:
        return [{"boxes": t["boxes"], "labels": torch.ones_like(torch.as_tensor(t["labels"]))}
                for t in super().select_targets(targets, key)]

    def forward(self, features: list[torch.Tensor], **context: Any) -> dict[str, Any]:
        size = context.get("input_size") or tuple(s * self.in_spec.strides[0] for s in features[0].shape[-2:])
        return self.rpn(list(features), tuple(size))

    def loss(self, outputs: dict[str, Any], targets: Any) -> dict[str, torch.Tensor]:
        return self.rpn.loss(outputs, self._checked(targets, outputs["objectness"].shape[0]))

    def postprocess(self, outputs: dict[str, Any]) -> Detections:
        """Per image the best ``max_detections`` proposals above ``score_thresh`` (label 1), best first;
        ``predict`` returns it as it is. Traceable one image at a time (``export_postprocess``)."""
        found = []
        for boxes, scores in zip(outputs["proposals"], outputs["scores"]):
            keep = torch.where(scores > self.score_thresh)[0][:self.max_detections]
            found.append({"boxes": boxes[keep], "scores": scores[keep], "labels": torch.ones_like(keep)})
        return found
