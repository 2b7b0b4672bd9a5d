"""The autograd plumbing shared by the native backends (cpu and cuda).

Both libraries expose the same C ABI for projection, SH and compositing (the
CUDA entry points take a stream as one more argument); `make_ops` wraps one of
them in `torch.library` custom ops with hand-written backward passes. Outputs
are allocated by torch on the inputs' device, so memory comes from torch's
allocators (and shows in `torch.cuda.max_memory_allocated`). float32 only.
"""
from __future__ import annotations

import ctypes
import weakref
from types import SimpleNamespace
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


def ptr(t: Optional[Tensor]):
    """Raw pointer of a tensor for ctypes. The caller must hold a reference to
    the tensor until the C call returns: never pass a temporary."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def check_same_device(**tensors) -> None:
    """Raise a ValueError unless every given tensor (None ones skipped) is on one device:
    the native code reads them all through raw pointers."""
    devs = {k: t.device for k, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError("splat: all tensors must be on one device, got "
                         + ", ".join(f"{k}={v}" for k, v in devs.items()))


def check_isect_count(M: int) -> None:
    """Tile lists index intersections with int32 (flatten ids, offsets, last ids)."""
    if M >= 2 ** 31:
        raise ValueError(f"splat.rasterize: {M:,} Gaussian-tile intersections exceed the int32 index range; "
                         "render fewer cameras or Gaussians per call")


def make_ops(name: str, call: Callable, max_channels: Optional[int] = None) -> SimpleNamespace:
    """Custom ops `splat::{name}_project`, `_sh` and `_rasterize` over a native library.

    `call(device, fn, *args)` runs the C function `fn` (the name without its
    library prefix) for tensors on `device` and raises on failure.
    `max_channels`: the most colour channels one compositing call takes."""

    def f32(t: Tensor, what: str) -> Tensor:
        if t.dtype != torch.float32:
            raise ValueError(f"splat.rasterize: backend={name!r} supports float32 only, {what} is {t.dtype}")
        return t.contiguous()

    def grad_or_zeros(g: Optional[Tensor], shape, device) -> Tensor:
        return torch.zeros(shape, dtype=torch.float32, device=device) if g is None else g.contiguous()

    # ------------------------------------------------------------------ projection
    @torch.library.custom_op(f"splat::{name}_project", mutates_args=())
    def project_op(
        means: Tensor, quats: Tensor, scales: Tensor, opacities: Optional[Tensor], viewmats: Tensor, Ks: Tensor,
        width: int, height: int, eps2d: float, near_plane: float, far_plane: float, radius_clip: float,
        antialiased: bool,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        C, N, dev = viewmats.shape[0], means.shape[0], means.device
        radii = torch.empty(C, N, 2, dtype=torch.int32, device=dev)
        means2d = torch.empty(C, N, 2, dtype=torch.float32, device=dev)
        depths = torch.empty(C, N, dtype=torch.float32, device=dev)
        conics = torch.empty(C, N, 3, dtype=torch.float32, device=dev)
        comps = torch.empty(C, N, dtype=torch.float32, device=dev)
        if C * N:
            call(dev, "project_fwd", C, N, ptr(means), ptr(quats), ptr(scales), ptr(opacities), ptr(viewmats),
                 ptr(Ks), width, height, eps2d, near_plane, far_plane, radius_clip, int(antialiased), ptr(radii),
                 ptr(means2d), ptr(depths), ptr(conics), ptr(comps))
        return radii, means2d, depths, conics, comps

    def project_setup(ctx, inputs, output):
        means, quats, scales, _, viewmats, Ks, width, height, eps2d, _, _, _, antialiased = inputs
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, output[0])
        ctx.args = (width, height, eps2d, antialiased)

    def project_backward(ctx, g_radii, g_means2d, g_depths, g_conics, g_comps):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.args
        C, N = radii.shape[:2]
        dev = means.device
        v_means, v_quats, v_scales = torch.zeros_like(means), torch.zeros_like(quats), torch.zeros_like(scales)
        v_view = torch.zeros_like(viewmats) if ctx.needs_input_grad[4] else None
        if C * N:
            # keep every buffer in a local: a temporary would be freed before the C call reads it
            g_means2d = grad_or_zeros(g_means2d, (C, N, 2), dev)
            g_depths = grad_or_zeros(g_depths, (C, N), dev)
            g_conics = grad_or_zeros(g_conics, (C, N, 3), dev)
            g_comps = None if g_comps is None else g_comps.contiguous()
            call(dev, "project_bwd", C, N, ptr(means), ptr(quats), ptr(scales), ptr(viewmats), ptr(Ks), width,
                 height, eps2d, int(antialiased), ptr(radii), ptr(g_means2d), ptr(g_depths), ptr(g_conics),
                 ptr(g_comps), ptr(v_means), ptr(v_quats), ptr(v_scales), ptr(v_view))
        return v_means, v_quats, v_scales, None, v_view, None, None, None, None, None, None, None, None

    torch.library.register_autograd(f"splat::{name}_project", project_backward, setup_context=project_setup)

    def project(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
                far_plane=1e10, radius_clip=0.0, antialiased=False):
        if Ks.requires_grad:
            raise ValueError(f"splat.rasterize: backend={name!r} has no gradient for Ks; use backend='torch'")
        return project_op(
            f32(means, "means"), f32(quats, "quats"), f32(scales, "scales"),
            None if opacities is None else f32(opacities.detach(), "opacities"),
            f32(viewmats, "viewmats"), f32(Ks, "Ks"), width, height, float(eps2d), float(near_plane),
            float(far_plane), float(radius_clip), bool(antialiased),
        )

    # ------------------------------------------------------------------ SH
    @torch.library.custom_op(f"splat::{name}_sh", mutates_args=())
    def sh_op(degree: int, dirs: Tensor, coeffs: Tensor, masks: Optional[Tensor]) -> Tensor:
        C, N = dirs.shape[:2]
        out = torch.empty(C, N, 3, dtype=torch.float32, device=dirs.device)
        if C * N:
            call(dirs.device, "sh_fwd", C, N, coeffs.shape[-2], degree, ptr(dirs), ptr(coeffs),
                 int(coeffs.dim() == 4), ptr(masks), ptr(out))
        return out

    def sh_setup(ctx, inputs, output):
        degree, dirs, coeffs, masks = inputs
        ctx.degree = degree
        ctx.save_for_backward(dirs, coeffs, masks)

    def sh_backward(ctx, g_out):
        dirs, coeffs, masks = ctx.saved_tensors
        C, N = dirs.shape[:2]
        # (the kernels zero every coefficient row before adding into it: no second pass here)
        v_coeffs = torch.empty_like(coeffs) if C * N else torch.zeros_like(coeffs)
        v_dirs = torch.zeros_like(dirs) if ctx.needs_input_grad[1] else None
        if C * N:
            g_out = g_out.contiguous()  # a local, so that it outlives the call
            call(dirs.device, "sh_bwd", C, N, coeffs.shape[-2], ctx.degree, ptr(dirs), ptr(coeffs),
                 int(coeffs.dim() == 4), ptr(masks), ptr(g_out), ptr(v_coeffs), ptr(v_dirs))
        return None, v_dirs, v_coeffs, None

    torch.library.register_autograd(f"splat::{name}_sh", sh_backward, setup_context=sh_setup)

    def spherical_harmonics(degree, dirs, coeffs, masks=None):
        m = None if masks is None else masks.to(torch.uint8).contiguous()
        return sh_op(degree, f32(dirs, "dirs"), f32(coeffs, "colors"), m)

    # ------------------------------------------------------------------ compositing
    def tile_offsets(isect_offsets: Tensor, M: int) -> Tensor:
        end = torch.tensor([M], dtype=torch.int64, device=isect_offsets.device)
        return torch.cat([isect_offsets.reshape(-1).long(), end])

    @torch.library.custom_op(f"splat::{name}_rasterize", mutates_args=())
    def rasterize_op(
        means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, backgrounds: Optional[Tensor],
        isect_offsets: Tensor, flatten_ids: Tensor, tile_mask: Optional[Tensor], width: int, height: int,
        tile_size: int, absgrad: bool,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        return blend_forward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask,
                             width, height, tile_size)

    def blend_forward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, width,
                      height, tile_size, tile_work=None):
        """The native forward blend (inputs already float32 and contiguous); fills `tile_work` if given."""
        C, N, D = colors.shape
        th, tw = isect_offsets.shape[1:]
        dev = colors.device
        out_colors = torch.zeros(C, height, width, D, dtype=torch.float32, device=dev)
        out_alphas = torch.zeros(C, height, width, 1, dtype=torch.float32, device=dev)
        last_ids = torch.full((C, height, width), -1, dtype=torch.int32, device=dev)
        offsets = tile_offsets(isect_offsets, flatten_ids.numel())
        call(dev, "rasterize_fwd", C, N, D, width, height, tile_size, tw, th, ptr(means2d), ptr(conics), ptr(colors),
             ptr(opacities), ptr(backgrounds), ptr(offsets), ptr(flatten_ids), ptr(tile_mask), ptr(out_colors),
             ptr(out_alphas), ptr(last_ids), ptr(tile_work))
        return out_colors, out_alphas, last_ids

    def rasterize_setup(ctx, inputs, output):
        (means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, width, height,
         tile_size, absgrad) = inputs
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask,
                              output[1], output[2])
        ctx.args = (width, height, tile_size, absgrad)
        target = absgrad_target.get(id(means2d)) if absgrad else None
        ctx.absgrad_target = None if target is None else weakref.ref(target)

    def rasterize_backward(ctx, g_colors, g_alphas, g_last):
        (means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, tile_mask, out_alphas,
         last_ids) = ctx.saved_tensors
        width, height, tile_size, absgrad = ctx.args
        C, N, D = colors.shape
        th, tw = isect_offsets.shape[1:]
        dev = colors.device
        g_colors = grad_or_zeros(g_colors, (C, height, width, D), dev)
        g_alphas = None if g_alphas is None else g_alphas.contiguous()
        v_means2d, v_conics = torch.empty_like(means2d), torch.empty_like(conics)
        v_colors, v_opacities = torch.empty_like(colors), torch.empty_like(opacities)
        v_abs = torch.empty_like(means2d) if absgrad else None
        offsets = tile_offsets(isect_offsets, flatten_ids.numel())
        call(dev, "rasterize_bwd", C, N, D, width, height, tile_size, tw, th, ptr(means2d), ptr(conics), ptr(colors),
             ptr(opacities), ptr(backgrounds), ptr(offsets), ptr(flatten_ids), ptr(tile_mask), ptr(out_alphas),
             ptr(last_ids), ptr(g_colors), ptr(g_alphas), ptr(v_means2d), ptr(v_conics), ptr(v_colors),
             ptr(v_opacities), ptr(v_abs))
        target = ctx.absgrad_target() if ctx.absgrad_target is not None else None
        if target is not None:
            target.absgrad = v_abs
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            T = 1.0 - out_alphas  # [C, H, W, 1]
            if tile_mask is not None:  # pixels of tiles not rendered do not see the background
                m = tile_mask.reshape(C, th, tw).bool()
                m = m.repeat_interleave(tile_size, 1).repeat_interleave(tile_size, 2)[:, :height, :width]
                T = T * m[..., None]
            v_bg = (T * g_colors).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opacities, v_bg, None, None, None, None, None, None, None

    torch.library.register_autograd(f"splat::{name}_rasterize", rasterize_backward, setup_context=rasterize_setup)

    # means2d tensors that asked for absgrad, by id, while their op is being recorded
    absgrad_target: dict = {}

    def rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                            backgrounds=None, tile_mask=None, absgrad=False):
        D = colors.shape[-1]
        check_same_device(means2d=means2d, conics=conics, colors=colors, opacities=opacities,
                          backgrounds=backgrounds, isect_offsets=isect_offsets, flatten_ids=flatten_ids,
                          tile_mask=tile_mask)
        if flatten_ids.dtype != torch.int32:
            raise ValueError(f"splat: flatten_ids must be int32, got {flatten_ids.dtype}")
        if max_channels is not None and D > max_channels:
            raise ValueError(f"splat.rasterize: backend={name!r} composites at most {max_channels} channels per "
                             f"call, got {D}; pass channel_chunk <= {max_channels}")
        args = (
            f32(means2d, "means2d"), f32(conics, "conics"), f32(colors, "colors"), f32(opacities, "opacities"),
            None if backgrounds is None else f32(backgrounds, "backgrounds"),
            isect_offsets.contiguous(), flatten_ids.contiguous(),
            None if tile_mask is None else tile_mask.to(torch.uint8).contiguous(),
            width, height, tile_size, bool(absgrad),
        )
        if absgrad:
            absgrad_target[id(args[0])] = means2d
        try:
            out_colors, out_alphas, _ = rasterize_op(*args)
        finally:
            absgrad_target.pop(id(args[0]), None)
        return out_colors, out_alphas

    @torch.no_grad()
    def rasterize_to_pixels_jvp(means2d, conics, colors, opacities, t_means2d, t_conics, t_colors, t_opacities,
                                width, height, tile_size, isect_offsets, flatten_ids, backgrounds=None,
                                tile_mask=None):
        """Forward-mode derivative of `rasterize_to_pixels` (a Jacobian-vector product): the
        tangents (t_colors [C,H,W,D], t_alphas [C,H,W,1]) of its outputs for the tangents of
        its four differentiable inputs (same shapes as the inputs)."""
        C, N, D = colors.shape
        th, tw = isect_offsets.shape[1:]
        dev = colors.device
        args = [f32(x, n).contiguous() for x, n in ((means2d, "means2d"), (conics, "conics"), (colors, "colors"),
                                                     (opacities, "opacities"), (t_means2d, "t_means2d"),
                                                     (t_conics, "t_conics"), (t_colors, "t_colors"),
                                                     (t_opacities, "t_opacities"))]
        for x, y, n in zip(args[4:], args[:4], ("t_means2d", "t_conics", "t_colors", "t_opacities")):
            if x.shape != y.shape:
                raise ValueError(f"splat: {n} must have the shape of its input {list(y.shape)}, got {list(x.shape)}")
        bg = None if backgrounds is None else f32(backgrounds, "backgrounds").contiguous()
        mask = None if tile_mask is None else tile_mask.to(torch.uint8).contiguous()
        t_colors_out = torch.zeros(C, height, width, D, dtype=torch.float32, device=dev)
        t_alphas_out = torch.zeros(C, height, width, 1, dtype=torch.float32, device=dev)
        offsets = tile_offsets(isect_offsets, flatten_ids.numel())
        fids = flatten_ids.contiguous()
        call(dev, "rasterize_jvp", C, N, D, width, height, tile_size, tw, th, *[ptr(a) for a in args[:4]], ptr(bg),
             ptr(offsets), ptr(fids), ptr(mask), *[ptr(a) for a in args[4:]], ptr(t_colors_out), ptr(t_alphas_out))
        return t_colors_out, t_alphas_out

    @torch.no_grad()
    def blend_work(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets,
                   flatten_ids) -> Tensor:
        """Forward blend only, returning how many (pixel, Gaussian) pairs each tile evaluated
        before all its pixels were done ([C * th * tw] int32): the work count for benchmarks
        (the CPU kernels evaluate only the rows of a tile each Gaussian can reach; the CUDA
        ones every pixel of the tile)."""
        th, tw = isect_offsets.shape[1:]
        work = torch.zeros(colors.shape[0] * th * tw, dtype=torch.int32, device=colors.device)
        blend_forward(f32(means2d, "means2d"), f32(conics, "conics"), f32(colors, "colors"),
                      f32(opacities, "opacities"), None, isect_offsets.contiguous(), flatten_ids.contiguous(), None,
                      width, height, tile_size, work)
        return work

    return SimpleNamespace(project=project, spherical_harmonics=spherical_harmonics,
                           rasterize_to_pixels=rasterize_to_pixels, rasterize_to_pixels_jvp=rasterize_to_pixels_jvp,
                           blend_work=blend_work)
