"""Small random scenes and cameras for the tests."""
import math

import torch

import splat.cameras


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)):
    """World->camera (OpenCV) viewmat [4,4] float64 of a camera at `eye` looking at `target`."""
    return torch.from_numpy(splat.cameras.look_at(eye, target, up))


def cameras(C=1, width=64, height=48, radius=4.0, fov_deg=60.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1000)
    views, Ks = [], []
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    for i in range(C):
        ang = 2 * math.pi * i / max(C, 1) + 0.3 * float(torch.rand(1, generator=g))
        eye = (radius * math.cos(ang), 0.6 * float(torch.randn(1, generator=g)), radius * math.sin(ang))
        views.append(look_at(eye))
        K = torch.tensor([[f, 0, width / 2 + 0.7], [0, f * 1.05, height / 2 - 0.4], [0, 0, 1]], dtype=torch.float64)
        Ks.append(K)
    return torch.stack(views).to(dtype), torch.stack(Ks).to(dtype)


def gaussians(N, seed=0, sh_degree=None, D=3, extent=1.0, scale=(0.02, 0.2), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g) * 2 - 1) * extent
    quats = torch.randn(N, 4, generator=g)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    scales = torch.exp(torch.rand(N, 3, generator=g) * (hi - lo) + lo)
    opacities = torch.rand(N, generator=g) * 0.9 + 0.05
    if sh_degree is None:
        colors = torch.rand(N, D, generator=g)
    else:
        colors = torch.randn(N, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


# the device each backend renders on
DEVICES = {"torch": "cpu", "cpu": "cpu", "cuda": "cuda", "cuda-emulated": "cpu"}


def on(backend, *tensors):
    """The tensors moved to the device of `backend` (a list)."""
    return [t.to(DEVICES[backend]) for t in tensors]


def blender_c2w(centre, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """A Blender/OpenGL camera-to-world matrix [4,4] (x right, y up, z back, float64 numpy) at
    ``centre`` looking at ``target`` (what NeRF-synthetic ``transform_matrix`` holds)."""
    import numpy as np

    c = np.asarray(centre, float)
    back = c - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, np.cross(back, right), back, c
    return M


def assert_orbit_c2w(m, look_at, radius):
    """Assert that `m` (a NeRF-synthetic ``transform_matrix``, OpenGL camera-to-world) is a rigid
    pose on the sphere of `radius` about `look_at`, looking at it (-z), upright in a z-up world
    (camera y has a positive world-z component). Returns the unit direction from the camera to
    `look_at`."""
    import numpy as np
    import pytest

    m = np.asarray(m, dtype=np.float64)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    R = m[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    to_target = np.asarray(look_at, dtype=np.float64) - m[:3, 3]
    assert np.linalg.norm(to_target) == pytest.approx(radius, rel=1e-5)
    np.testing.assert_allclose(-R[:, 2], to_target / np.linalg.norm(to_target), atol=1e-6)  # OpenGL: looks down -z
    assert R[2, 1] > 0  # upright
    return to_target / np.linalg.norm(to_target)
