"""``clip-unlearn-prefetch``: download a config's weights and datasets, on a machine with network.

Takes the same overrides as ``clip-unlearn`` (``backbone=...``, ``dataset=...``, ``paths.*``) and fills
``paths.weights_dir`` and ``paths.data_dir``, so that runs on air-gapped nodes find everything locally.
Datasets that cannot be downloaded (ImageNet, PACS, Tiny-ImageNet) are reported with where to put them.
"""

from __future__ import annotations

import sys

from open_clip.pretrained import download_pretrained, get_pretrained_cfg

from clip_unlearn.backbone import check_arch, resolve_weights
from clip_unlearn.config import build, compose_config
from clip_unlearn.errors import ConfigError


def prefetch(overrides: list[str]) -> list[str]:
    cfg = compose_config(*overrides)
    lines = []
    backbone = cfg.backbone
    if backbone.checkpoint or not backbone.pretrained:
        lines.append(f"backbone {backbone.arch}: {backbone.checkpoint or 'random init'}, nothing to download")
    else:
        check_arch(backbone.arch)
        try:
            path = resolve_weights(backbone.arch, backbone.pretrained, None, backbone.cache_dir)[0]
        except ConfigError as missing:
            if "not in the local cache" not in str(missing):
                raise
            try:
                path = download_pretrained(get_pretrained_cfg(backbone.arch, backbone.pretrained),
                                           cache_dir=backbone.cache_dir)
            except Exception as error:  # no network, hub refused: say so in one line
                raise ConfigError(f"downloading {backbone.arch}/{backbone.pretrained} failed: {error}") from None
        lines.append(f"backbone {backbone.arch}/{backbone.pretrained}: {path}")
    heldout = cfg.eval.heldout
    names = list(cfg.eval.datasets) if heldout == "auto" else ([heldout] if isinstance(heldout, str) else list(heldout))
    seen = set()
    for node in [cfg.dataset, *(cfg.eval.datasets[n] for n in names if n in cfg.eval.datasets)]:
        dataset = build(node, download=True)
        if dataset.name not in seen:
            seen.add(dataset.name)
            lines.append(dataset.prefetch())
    return lines


def main() -> None:
    try:
        for line in prefetch(sys.argv[1:]):
            print(line)
    except ConfigError as error:
        print(f"clip-unlearn-prefetch: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
