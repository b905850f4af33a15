"""A real face recognizer on face renderings: dlib's detector, 5-point landmarks and ResNet embedding.

One place for the question "is there a face in this picture, and whose is it?", shared by the
face cohort (is a generated face a new person?), the audit (face-recognizer attacker, detection
rate) and the per-scan self-check. dlib ships as the ``dlib-bin`` wheel; the weights come from
``face_recognition_models`` (CC0). We use the 5-point landmark model only: the 68-point one was
trained on 300-W data whose terms are non-commercial. That package's ``__init__`` needs
``pkg_resources`` (absent from modern setuptools), so its folder is located without importing it.

Embeddings are 128-d with dlib's convention: Euclidean distance, < 0.6 on photos means "same
person". Renders of MRI skin are not photos: the project's own different-person threshold is
calibrated on renders (see ``docs/cohort.md``), not taken from that convention.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from cpmae.errors import CPMAEError

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_FILE = "dlib_face_recognition_resnet_model_v1.dat"
UPSAMPLE = 1  # one pyramid up-step: faces in 320 px renders are ~190 px, found with or without it
EMBEDDING_JITTER = 0  # dlib's optional re-sampling; 0 keeps one embedding per picture deterministic
# Different-person threshold on frontal skin renders (Euclidean embedding distance), calibrated by
# bench/bench_cohort.py on 2026-11-30 (AMD EPYC, 2 cores; docs/cohort.md): the same head re-rendered
# (2 source heads + 4 generated subjects at 128³, each turned ±5° about each axis or with the skin
# threshold x0.85 / x1.15, 48 pairs) 0.06-0.22 (mean 0.12); different people (the two real source
# heads 0.57; 10 random MakeHuman heads rendered as meshes, 45 pairs, 0.40-0.68, mean 0.54). The
# threshold is the midpoint (0.307) of the largest same-head and the smallest different-person distance.
DIFFERENT_PERSON_THRESHOLD = 0.30


def models_dir() -> Path:
    """Folder of the ``face_recognition_models`` weights, found without importing the package."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CPMAEError(f"the face recognizer needs the {MODELS_PACKAGE} package: "
                         f"pip install {MODELS_PACKAGE}==0.3.0 dlib-bin")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def detector_cache_path(dlib) -> Path:
    from cpmae.samples import cache_dir

    return cache_dir() / "facerec" / f"frontal_face_detector-dlib{dlib.__version__}.svm"


def frontal_detector(dlib):
    """dlib's frontal face detector, saved to the user cache on first use and read from there after.

    Building it from dlib's built-in serialised form took 0.23 s of every process (a fifth of a
    scan's self-check); reading the saved file takes 1 ms (AMD EPYC, 2026-12-01). The file is
    dlib's own ``save`` of that detector, per dlib version; one that cannot be read is rebuilt.
    """
    from cpmae.atomic import atomic_path

    path = detector_cache_path(dlib)
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except Exception:  # truncated or damaged: rebuilt and saved again below
            pass
    detector = dlib.get_frontal_face_detector()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            detector.save(str(tmp))
    except Exception:  # a read-only cache: built in every process, as before
        pass
    return detector


@dataclass(frozen=True)
class Face:
    """One detected face: box (left, top, right, bottom) in pixels, detector score, embedding."""

    box: tuple
    score: float
    embedding: np.ndarray


class FaceRecognizer:
    """Lazily loaded dlib models; one instance per process is enough (``recognizer()``)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - dependency of the engine
            raise CPMAEError("the face recognizer needs dlib: pip install dlib-bin") from exc
        folder = models_dir()
        self._detector = frontal_detector(dlib)
        self._landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        self._embedder = dlib.face_recognition_model_v1(str(folder / EMBEDDING_FILE))

    def faces(self, rgb: np.ndarray) -> List[Face]:
        """Every face found in an RGB uint8 picture, best detector score first."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        rects, scores, _ = self._detector.run(rgb, UPSAMPLE, 0.0)
        found = []
        for rect, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
            shape = self._landmarks(rgb, rect)
            emb = np.asarray(self._embedder.compute_face_descriptor(rgb, shape, EMBEDDING_JITTER),
                             dtype=np.float64)
            found.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), emb))
        return found

    def detect(self, rgb: np.ndarray) -> bool:
        """Is there a face in this picture?"""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        rects, _, _ = self._detector.run(rgb, UPSAMPLE, 0.0)
        return len(rects) > 0

    def embed(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        """Embedding of the best-scoring face, or None when no face is found."""
        found = self.faces(rgb)
        return found[0].embedding if found else None


@lru_cache(maxsize=1)
def recognizer() -> FaceRecognizer:
    """The process-wide recognizer (loading the ResNet takes ~0.3 s)."""
    return FaceRecognizer()


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings (dlib's metric)."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def distance_matrix(queries: Sequence[np.ndarray], options: Sequence[np.ndarray]) -> np.ndarray:
    """[len(queries), len(options)] Euclidean distances."""
    q = np.asarray(queries, dtype=np.float64)
    o = np.asarray(options, dtype=np.float64)
    return np.sqrt(np.maximum(((q[:, None, :] - o[None, :, :]) ** 2).sum(-1), 0.0))
