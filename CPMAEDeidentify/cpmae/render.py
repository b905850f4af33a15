"""Offscreen face renderings of a head MRI: the pictures a re-identification attack works on.

Every head is first resampled into the canonical frame (axis-aligned LPS, ``RENDER_SPACING_MM``
voxels), so the cameras are fixed whatever the scanner's orientation: *frontal* looks at the
face from the front (camera at anterior = -y, superior up), *profile* from the subject's right
side (camera at -x, face to the image's right). The projection is orthographic with a fixed
``VIEW_HEIGHT_MM``, so one pixel is the same number of millimetres for every subject and head
size stays comparable (``STANDARD_VIEWS`` adds the ¾ views, the left profile and the view from
below: the six cameras of a face check); the cameras aim at the centre of the head (the vertex kept in view, a
long neck cropped, as in ``cpmae.geometry``'s model frame), and a de-identified copy is rendered
with its original's centre so the pair stays aligned.

The skin is an iso-surface (``vtkFlyingEdges3D``) at ``SKIN_ISO_FRACTION`` of the air/head Otsu
threshold, on the largest connected head component only (specks of noise in the air never
render) with the inside of the head filled (no hidden brain surfaces to rasterise). The same
input always gives the same pixels.

Offscreen backends (what was found on the build machine, vtk 9.6 PyPI wheel, Debian 12): the
wheel picks the OpenGL window at run time from ``VTK_DEFAULT_OPENGL_WINDOW``. Without a display
it tries X first (warns), then EGL; EGL works here through Mesa's llvmpipe (OpenGL 4.5, no GPU
needed) and is requested directly. ``vtkOSMesaRenderWindow`` needs libOSMesa, absent here; with
neither library VTK segfaults in the first Render(), so ``headless_backend`` checks first and
raises a one-line ``OutputError`` instead. A user's ``VTK_DEFAULT_OPENGL_WINDOW`` always wins.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from cpmae.atomic import atomic_path
from cpmae.errors import InputError, OutputError

# ---------------------------------------------------------------------------------------------
# The render specification: one source for the CLI, the audit, the review page and the Slicer
# panel (CPMAEDeidentifyLib.rendering turns it into 3D-view cameras and a transfer function).
# Importing it needs only numpy and SimpleITK, which Slicer ships.
# ---------------------------------------------------------------------------------------------

_S = float(np.sqrt(0.5))
# view -> (camera direction from the focal point towards the camera, view-up), in LPS (x: left,
# y: posterior, z: superior). "left"/"right" are the SUBJECT's sides.
CAMERAS = {
    "frontal": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),  # in front of the face (anterior = -y)
    "three_quarter_left": ((_S, -_S, 0.0), (0.0, 0.0, 1.0)),  # front-left, 45 degrees
    "three_quarter_right": ((-_S, -_S, 0.0), (0.0, 0.0, 1.0)),  # front-right, 45 degrees
    "profile_left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),  # at the subject's left (left = +x)
    "profile_right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),  # at the subject's right (right = -x)
    "below": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),  # under the chin, face at the top of the picture
}
VIEW_ALIASES = {"profile": "profile_right"}  # the CLI's and the audit's original name
# the six standard cameras of a face check, in reading order
STANDARD_VIEWS = ("frontal", "three_quarter_left", "three_quarter_right", "profile_left", "profile_right",
                  "below")
VIEWS = ("frontal", "profile")  # default of the CLI and the audit (kept for their outputs)
ALL_VIEWS = STANDARD_VIEWS + tuple(VIEW_ALIASES)
VIEW_LABELS = {"frontal": "frontal", "three_quarter_left": "3/4 left", "three_quarter_right": "3/4 right",
               "profile_left": "left profile", "profile_right": "right profile", "below": "from below",
               "profile": "right profile"}
SKIN_ISO_FRACTION = 0.6  # of the air/head Otsu threshold: low enough to keep thin skin (ears, nostrils)
SKIN_RGB = (0.94, 0.77, 0.66)
BACKGROUND_RGB = (0.0, 0.0, 0.0)


def camera(view: str):
    """(direction, view-up) in LPS of a view name (aliases accepted)."""
    _check_view(view)
    return CAMERAS[VIEW_ALIASES.get(view, view)]

RENDER_SPACING_MM = 2.0  # surfaces at 2 mm: faces stay recognisable and a view costs well under 1 s
SMOOTHING_SIGMA_VOXELS = 0.7  # removes the staircase of linear resampling without rounding the nose
VIEW_HEIGHT_MM = 256.0  # orthographic: the picture spans this many mm vertically, whatever the head
VERTEX_MARGIN_MM = 8.0  # air kept above the vertex when a tall scan (long neck) must be cropped
CAMERA_DISTANCE_MM = 1000.0  # only sets the clipping range with an orthographic camera

ImageLike = Union[sitk.Image, Tuple[np.ndarray, Sequence[float]]]


# ---------------------------------------------------------------------------------------------
# input -> canonical volume -> skin surface
# ---------------------------------------------------------------------------------------------

def as_image(img: ImageLike) -> sitk.Image:
    """A SimpleITK image from ``img``; an ``(array [z, y, x], spacing (x, y, z))`` pair is taken as
    already axis-aligned in LPS, centred on the origin."""
    if isinstance(img, sitk.Image):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError("a face rendering needs a 3D single-channel image")
        return img
    try:
        array, spacing = img
    except (TypeError, ValueError):
        raise InputError("expected a SimpleITK image or an (array, spacing) pair") from None
    array = np.asarray(array, dtype=np.float32)
    spacing = tuple(float(s) for s in spacing)
    if array.ndim != 3 or len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"expected a 3D array and three positive spacings, got {array.shape} and {spacing}")
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(spacing)
    out.SetOrigin(tuple(-(n - 1) * s / 2.0 for n, s in zip(out.GetSize(), spacing)))
    return out


def fov_centre(img: ImageLike) -> np.ndarray:
    """Physical LPS centre of the image's field of view.

    An alternative focal point that ignores content; ``camera_centre`` (the default) is safer
    for scans whose FOV is not centred on the head.
    """
    image = as_image(img)
    size = np.asarray(image.GetSize(), dtype=np.float64)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))


def canonical_volume(img: sitk.Image, spacing_mm: float = RENDER_SPACING_MM) -> sitk.Image:
    """``img`` resampled (linear, float32) onto an axis-aligned LPS grid covering its whole FOV.

    A scan already on such a grid (the engine's 128³ model grid) is only cast to float32.
    """
    grid = canonical_grid(img, spacing_mm)
    if grid is None:
        return sitk.Cast(img, sitk.sitkFloat32)
    return sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def canonical_grid(img: sitk.Image, spacing_mm: float = RENDER_SPACING_MM) -> Optional[sitk.Image]:
    """The axis-aligned LPS grid ``canonical_volume`` resamples ``img`` onto (None: ``img`` is on one)."""
    if (np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)
            and np.allclose(img.GetSpacing(), spacing_mm, rtol=0, atol=1e-6)):
        return None
    size = np.asarray(img.GetSize())
    corners = np.array([img.TransformContinuousIndexToPhysicalPoint([float(c) for c in (i, j, k)])
                        for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    n = np.maximum(1, np.ceil((hi - lo) / spacing_mm).astype(int))
    ref = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    ref.SetSpacing([spacing_mm] * 3)
    centre = (lo + hi) / 2.0
    ref.SetOrigin((centre - (n - 1) * spacing_mm / 2.0).tolist())
    return ref


def skin_threshold(img: ImageLike) -> float:
    """Automatic skin iso-value in the image's own intensity unit (a numpy array is accepted)."""
    from cpmae.envelope import foreground_threshold

    arr = img if isinstance(img, np.ndarray) else sitk.GetArrayViewFromImage(as_image(img))
    return SKIN_ISO_FRACTION * foreground_threshold(arr)


class _Skin:
    """The canonical volume of one scan, cleaned so that only its outer skin crosses ``iso``.

    Specks above ``iso`` outside the largest head component are zeroed and enclosed dark regions
    (ventricles, skull, sinuses) are raised above ``iso``: neither makes triangles nobody sees.
    """

    def __init__(self, image: sitk.Image, iso: Optional[float] = None) -> None:
        from scipy import ndimage as ndi

        from cpmae.envelope import fill_holes, largest_component

        self.iso = skin_threshold(image) if iso is None else float(iso)
        canon = canonical_volume(image)
        self.origin = np.asarray(canon.GetOrigin())
        self.spacing = np.asarray(canon.GetSpacing())
        volume = np.nan_to_num(sitk.GetArrayFromImage(canon), nan=0.0, posinf=0.0, neginf=0.0)
        field = ndi.gaussian_filter(volume, SMOOTHING_SIGMA_VOXELS, truncate=3.0)
        self.head = largest_component(field > self.iso)
        field[(field > self.iso) & ~self.head] = 0.0
        field[fill_holes(self.head) & ~self.head] = 2.0 * self.iso
        self.field = np.pad(field, 1)  # zero rim: the surface closes where the head leaves the FOV

    def centre(self) -> np.ndarray:
        """Physical LPS centre of the head's bounding box, the vertex kept in view for tall scans.

        Like ``cpmae.geometry``'s model frame: a scan with a long neck is framed from the top of
        the head down, so the face is never cut off; an empty scan is framed on its FOV centre.
        """
        idx = np.nonzero(self.head.any(axis=(1, 2)))[0], np.nonzero(self.head.any(axis=(0, 2)))[0], \
            np.nonzero(self.head.any(axis=(0, 1)))[0]
        if not len(idx[0]):
            shape_xyz = np.asarray(self.head.shape[::-1], dtype=np.float64)
            return self.origin + (shape_xyz - 1) / 2.0 * self.spacing
        lo = self.origin + np.array([idx[2][0], idx[1][0], idx[0][0]]) * self.spacing
        hi = self.origin + np.array([idx[2][-1], idx[1][-1], idx[0][-1]]) * self.spacing
        centre = (lo + hi) / 2.0
        if hi[2] - lo[2] > VIEW_HEIGHT_MM - 2 * VERTEX_MARGIN_MM:
            centre[2] = hi[2] + VERTEX_MARGIN_MM - VIEW_HEIGHT_MM / 2.0
        return centre

    def surface(self):
        """vtkPolyData of the skin in physical LPS millimetres (empty when nothing exceeds ``iso``)."""
        from vtkmodules.util.numpy_support import numpy_to_vtk
        from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
        from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D

        if not self.head.any():
            return vtkPolyData()
        data = vtkImageData()
        data.SetDimensions(self.field.shape[2], self.field.shape[1], self.field.shape[0])
        data.SetSpacing(self.spacing.tolist())
        data.SetOrigin((self.origin - self.spacing).tolist())  # the zero rim adds one voxel
        data.GetPointData().SetScalars(numpy_to_vtk(self.field.ravel(), deep=True))  # x fastest
        surf = vtkFlyingEdges3D()
        surf.SetInputData(data)
        surf.SetValue(0, self.iso)
        surf.ComputeNormalsOn()
        surf.ComputeScalarsOff()
        surf.Update()
        out = vtkPolyData()
        out.ShallowCopy(surf.GetOutput())
        return out


def skin_surface(img: ImageLike, iso: Optional[float] = None):
    """vtkPolyData of the skin in physical LPS millimetres (empty when no voxel exceeds ``iso``)."""
    return _Skin(as_image(img), iso).surface()


def camera_centre(img: ImageLike, iso: Optional[float] = None) -> np.ndarray:
    """Physical LPS focal point of the cameras: the centre of the head (see ``_Skin.centre``).

    Render a scan's de-identified copy with the original's centre so the pair stays aligned.
    """
    return _Skin(as_image(img), iso).centre()


# ---------------------------------------------------------------------------------------------
# one reusable offscreen scene
# ---------------------------------------------------------------------------------------------

_HEADLESS_BACKENDS = (("vtkEGLRenderWindow", "EGL"), ("vtkOSMesaRenderWindow", "OSMesa"))
NO_BACKEND = ("cannot render faces: there is no display and neither libEGL nor libOSMesa is installed "
              "(Debian/Ubuntu: apt-get install libegl1, or libosmesa6)")


def headless_backend(environ=os.environ, platform: str = sys.platform,
                     find_library: Optional[Callable[[str], Optional[str]]] = None) -> Optional[str]:
    """The VTK window class to request on a Linux machine without a display, or None to let VTK
    choose (a display is present, another OS, or the user set ``VTK_DEFAULT_OPENGL_WINDOW``).

    VTK would try X first (and warn), and with neither EGL nor OSMesa present it crashes in the
    first Render(); this turns that into an ``OutputError`` that says what to install.
    """
    if not platform.startswith("linux") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    if environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        return None
    if find_library is None:
        from ctypes.util import find_library
    for window_class, library in _HEADLESS_BACKENDS:
        if find_library(library):
            return window_class
    raise OutputError(NO_BACKEND)


def _has_library(name: str) -> bool:
    from ctypes.util import find_library

    return find_library(name) is not None


class _Scene:
    """Render window, renderer and skin actor, created once per process and reused."""

    def __init__(self) -> None:
        backend = headless_backend()
        if backend:
            os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = backend
        import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL factories)
        from vtkmodules.vtkRenderingCore import (vtkActor, vtkPolyDataMapper, vtkRenderer,
                                                 vtkRenderWindow, vtkWindowToImageFilter)
        from vtkmodules.vtkRenderingCore import vtkLightKit

        self.window = vtkRenderWindow()
        if self.window.GetClassName() == "vtkOSOpenGLRenderWindow" and not _has_library("OSMesa"):
            raise OutputError(NO_BACKEND)  # VTK's last resort would segfault in Render()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*BACKGROUND_RGB)
        self.window.AddRenderer(self.renderer)
        self.mapper = vtkPolyDataMapper()
        self.mapper.ScalarVisibilityOff()
        self.actor = vtkActor()
        self.actor.SetMapper(self.mapper)
        prop = self.actor.GetProperty()
        prop.SetColor(*SKIN_RGB)
        prop.SetAmbient(0.12)
        prop.SetDiffuse(0.85)
        prop.SetSpecular(0.08)
        prop.SetSpecularPower(12.0)
        self.renderer.AddActor(self.actor)
        self.renderer.RemoveAllLights()
        kit = vtkLightKit()  # key/fill/back lights that follow the camera: depth cues on a face
        kit.AddLightsToRenderer(self.renderer)
        self.grabber = vtkWindowToImageFilter()
        self.grabber.SetInput(self.window)
        self.grabber.SetInputBufferTypeToRGB()
        self.grabber.ReadFrontBufferOff()
        self.grabber.ShouldRerenderOff()  # render() has just rendered: reading must not render again

    def render(self, surface, view: str, centre: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
        from vtkmodules.util.numpy_support import vtk_to_numpy

        direction, up = camera(view)
        self.mapper.SetInputData(surface)
        width, height = int(size[0]), int(size[1])
        self.window.SetSize(width, height)
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetParallelScale(VIEW_HEIGHT_MM / 2.0)
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + CAMERA_DISTANCE_MM * np.asarray(direction)))
        cam.SetViewUp(*up)
        cam.SetClippingRange(CAMERA_DISTANCE_MM - VIEW_HEIGHT_MM * 2, CAMERA_DISTANCE_MM + VIEW_HEIGHT_MM * 2)
        self.window.Render()
        self.grabber.Modified()
        self.grabber.Update()
        out = self.grabber.GetOutput()
        w, h, _ = out.GetDimensions()
        pixels = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, 3)
        return np.ascontiguousarray(pixels[::-1])  # VTK's first row is the bottom one


_SCENE: Optional[_Scene] = None


def _scene() -> _Scene:
    global _SCENE
    if _SCENE is None:
        _SCENE = _Scene()
    return _SCENE


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def _check_view(view: str) -> None:
    if view not in CAMERAS and view not in VIEW_ALIASES:
        raise ValueError(f"view must be one of {', '.join(ALL_VIEWS)}, not {view!r}")


def render_views(img: ImageLike, views: Sequence[str] = VIEWS, size: Tuple[int, int] = (320, 320),
                 iso: Optional[float] = None, centre: Optional[Sequence[float]] = None
                 ) -> Dict[str, np.ndarray]:
    """{view: uint8 [H, W, 3]} from one skin surface; ``size`` is (width, height) in pixels.

    ``iso``: skin threshold in the image's unit (default ``skin_threshold``); ``centre``: physical
    LPS focal point (default ``camera_centre``). Pass both from the original scan when rendering
    its de-identified copy so the two pictures differ only where the heads do.
    """
    for view in views:
        _check_view(view)
    return _render_skin(_Skin(as_image(img), iso), views, size, centre)


def _render_skin(skin: _Skin, views: Sequence[str], size: Tuple[int, int],
                 centre: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    surface = skin.surface()
    focus = skin.centre() if centre is None else np.asarray(centre, dtype=np.float64)
    scene = _scene()
    return {view: scene.render(surface, view, focus, size) for view in views}


def render_face(img: ImageLike, view: str = "frontal", size: Tuple[int, int] = (320, 320),
                iso: Optional[float] = None, centre: Optional[Sequence[float]] = None) -> np.ndarray:
    """One face rendering, uint8 [H, W, 3] (see ``render_views``)."""
    _check_view(view)
    return render_views(img, (view,), size, iso, centre)[view]


def save_png(array: np.ndarray, path: Union[str, Path]) -> Path:
    """Write an RGB uint8 array as PNG through a temporary file in the same folder and a rename."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def figure_grid(rows: Sequence[Tuple[str, Dict[str, np.ndarray]]], views: Sequence[str] = VIEWS,
                label_height: int = 22) -> np.ndarray:
    """Tile [(row label, {view: picture}), ...] into one labelled RGB image (rows x views)."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1][views[0]].shape[:2]
    canvas = Image.new("RGB", (w * len(views), (h + label_height) * len(rows)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (label, pictures) in enumerate(rows):
        top = r * (h + label_height)
        for c, view in enumerate(views):
            canvas.paste(Image.fromarray(pictures[view]), (c * w, top + label_height))
            draw.text((c * w + 6, top + 5), f"{label} - {view}", fill=(235, 235, 235))
    return np.asarray(canvas)


def before_after_figure(before_img: ImageLike, after_img: ImageLike, path: Union[str, Path],
                        labels: Sequence[str] = ("before", "after"), views: Sequence[str] = VIEWS,
                        size: Tuple[int, int] = (320, 320), singles: bool = False) -> List[Path]:
    """Write a labelled grid PNG (rows: before/after, columns: views) to ``path``.

    Both heads are rendered with the skin threshold and camera centre of ``before``, so the two
    rows differ only where the heads do. With ``singles`` each picture is also written next to
    the grid as ``<stem>_<label>_<view>.png``. Returns the written paths, the grid first.
    """
    for view in views:
        _check_view(view)
    skin = _Skin(as_image(before_img))
    centre = skin.centre()
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"labels must be two different names, got {labels!r}")
    rows = [(labels[0], _render_skin(skin, views, size, centre)),
            (labels[1], _render_skin(_Skin(as_image(after_img), skin.iso), views, size, centre))]
    path = Path(path)
    written = [save_png(figure_grid(rows, views), path)]
    if singles:
        for label, pictures in rows:
            for view, picture in pictures.items():
                written.append(save_png(picture, path.with_name(f"{path.stem}_{label}_{view}.png")))
    return written
