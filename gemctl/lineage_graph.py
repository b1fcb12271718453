"""A lineage tree as a picture (`gemctl lineage --graph FILE`): SVG written directly, PNG drawn with matplotlib.

Layered layout: the data and the earliest stage at the top, one row per generation, each row centred; arrows
point the way things were made (parent checkpoint -> child run -> its evaluations).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

BOX_W, BOX_H, GAP_X, GAP_Y = 220, 54, 30, 46
COLOURS = {"data": "#d8ecd4", "stage": "#d6e4f5", "eval": "#f7e3c6", "sweep": "#eadcf2", "dataset": "#eeeeee"}


def graph(tree: dict, down: bool) -> tuple[list[dict], list[tuple[int, int]]]:
    """Nodes ({label, kind, layer}) and edges (from, to) of an upstream (down=False) or downstream tree."""
    nodes: list[dict] = []
    edges: list[tuple[int, int]] = []

    def add(n: dict, layer: int) -> int:
        i = len(nodes)
        nodes.append({"label": label(n), "kind": n["kind"], "layer": layer})
        return i

    if down:
        def walk(n: dict, layer: int) -> int:
            i = add(n, layer)
            for c in n.get("children", []) + n.get("scores", []):
                edges.append((i, walk(c, layer + 1)))
            return i
        walk(tree, 0)
    else:
        chain = [tree]
        while "parent" in chain[-1]:
            chain.append(chain[-1]["parent"])
        # the stages top to bottom in column 1; each dataset in column 0, level with its first consumer
        seen_data: dict[str, int] = {}
        prev = None
        for depth, n in enumerate(reversed(chain)):
            i = add(n, depth)
            nodes[i]["col"] = 1
            for d in n.get("data", []):
                if d["digest"] not in seen_data:
                    seen_data[d["digest"]] = add({"kind": "dataset", "name": d["name"], "digest": d["digest"]},
                                                 depth)
                    nodes[seen_data[d["digest"]]]["col"] = 0
                edges.append((seen_data[d["digest"]], i))
            if prev is not None:
                edges.append((prev, i))
            prev = i
    return nodes, edges


def label(n: dict) -> list[str]:
    if n["kind"] == "dataset":
        return [n["name"], n["digest"][:16]]
    if n["kind"] == "eval":
        key = f"{n.get('benchmark')}/{n.get('metric')}"
        value = n.get("metrics", {}).get(key)
        return [f"eval {n.get('benchmark')}", f"{n.get('metric')} {value:.4g}" if value is not None else n["run_id"][:8]]
    first = n["name"] or n["run_id"][:8]
    return [first, f"run {n['run_id'][:8]}" + (f"  #{n['recipe_hash']}" if n.get("recipe_hash") else "")]


def layout(nodes: list[dict]) -> tuple[list[tuple[float, float]], float, float]:
    """Top-left corner of each node, and the picture's width and height."""
    if all("col" in n for n in nodes):  # a fixed grid (upstream: datasets beside the stages)
        width = (max(n["col"] for n in nodes) + 1) * (BOX_W + GAP_X) + GAP_X
        height = (max(n["layer"] for n in nodes) + 1) * (BOX_H + GAP_Y) + GAP_Y
        return ([(GAP_X + n["col"] * (BOX_W + GAP_X), GAP_Y + n["layer"] * (BOX_H + GAP_Y)) for n in nodes],
                width, height)
    layers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        layers.setdefault(n["layer"], []).append(i)
    width = max(len(v) for v in layers.values()) * (BOX_W + GAP_X) + GAP_X
    height = (max(layers) - min(layers) + 1) * (BOX_H + GAP_Y) + GAP_Y
    pos: list[tuple[float, float]] = [(0.0, 0.0)] * len(nodes)
    top = min(layers)
    for layer, ids in layers.items():
        row_w = len(ids) * (BOX_W + GAP_X) - GAP_X
        x0 = (width - row_w) / 2
        for k, i in enumerate(ids):
            pos[i] = (x0 + k * (BOX_W + GAP_X), GAP_Y + (layer - top) * (BOX_H + GAP_Y))
    return pos, width, height


def _ends(a: tuple[float, float], b: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where an arrow from box a to box b starts and ends: bottom to top between rows, else side to side."""
    (xa, ya), (xb, yb) = a, b
    if yb > ya:
        if xb > xa:  # down and right: from a's right side
            return (xa + BOX_W, ya + BOX_H / 2), (xb, yb + BOX_H / 2)
        return (xa + BOX_W / 2, ya + BOX_H), (xb + BOX_W / 2, yb)
    return (xa + BOX_W, ya + BOX_H / 2), (xb, yb + BOX_H / 2)


def svg(nodes: list[dict], edges: list[tuple[int, int]]) -> str:
    pos, width, height = layout(nodes)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    for a, b in edges:
        (xa, ya), (xb, yb) = _ends(pos[a], pos[b])
        out.append(f'<line x1="{xa:.0f}" y1="{ya:.0f}" x2="{xb:.0f}" y2="{yb:.0f}" '
                   'stroke="#555" marker-end="url(#arrow)"/>')
    for n, (x, y) in zip(nodes, pos):
        out.append(f'<g><rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
                   f'fill="{COLOURS.get(n["kind"], "#fff")}" stroke="#333"/>')
        for k, line in enumerate(n["label"]):
            out.append(f'<text x="{x + BOX_W / 2:.0f}" y="{y + 21 + 17 * k:.0f}" text-anchor="middle">'
                       f'{escape(line[:34])}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(nodes: list[dict], edges: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    pos, width, height = layout(nodes)
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y down, as in the SVG
    ax.axis("off")
    for a, b in edges:
        start, end = _ends(pos[a], pos[b])
        ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": "#555"})
    for n, (x, y) in zip(nodes, pos):
        ax.add_patch(FancyBboxPatch((x, y), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=6",
                                    facecolor=COLOURS.get(n["kind"], "#fff"), edgecolor="#333"))
        for k, line in enumerate(n["label"]):
            ax.text(x + BOX_W / 2, y + 17 + 17 * k, line[:34], ha="center", va="center", fontsize=8)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    tmp.replace(path)


def write(tree: dict, down: bool, path: Path) -> None:
    """The picture of `tree` in `path`: SVG or PNG by its extension."""
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise InputError(f"--graph {path}: name a .png or .svg file")
    if not path.parent.is_dir():
        raise InputError(f"--graph {path}: the folder {path.parent} does not exist")
    nodes, edges = graph(tree, down)
    if suffix == ".svg":
        atomic_write_text(path, svg(nodes, edges))
    else:
        png(nodes, edges, path)
