"""The jit functions both kernel dialects share: the softplus of dt, and the pixel walk of SS2D's
four directions.

Plain ``triton.jit`` functions of ``tl`` operations and nothing of this package: the Triton
kernels (:mod:`.triton_scan`, :mod:`.ss2d_triton`) call them as they are, and the Gluon kernels
(:mod:`.ss2d_gluon`) compile the same functions as Gluon (``gluon.jit(f.fn)``), so every kernel
makes dt and finds its pixels with the same arithmetic.
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import libdevice
except Exception:  # not installed, too old, or broken: the triton backend says so
    triton = None


if triton is not None:

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter has no libdevice
        @triton.jit
        def _fast_log2(x):
            return tl.log2(x)
    else:
        @triton.jit
        def _fast_log2(x):
            return libdevice.fast_log2f(x)  # the hardware's (MUFU) log2

    @triton.jit
    def softplus(x):
        # log(1 + e^x) = max(x, 0) + log1p(u), u = e^-|x| in (0, 1]: in a dozen instructions
        # instead of the ~30 of an exact logf (dt is made at every step of every channel).
        # log1p(u) is a 5-term series below u = 1/16 (error < u^6/6: 2e-7 relative), above it
        # the hardware log2 (absolute error 2^-22.6 near 1: < 2e-6 relative).
        u = tl.exp2(tl.abs(x) * -1.4426950408889634)
        series = u * (1.0 + u * (-0.5 + u * (0.3333333333 + u * (-0.25 + u * 0.2))))
        log1p = tl.where(u < 0.0625, series, _fast_log2(1.0 + u) * 0.6931471805599453)
        return tl.maximum(x, 0.0) + log1p

    @triton.jit
    def pixel_at(step, direction, height, width, length):
        """Row-major index of the pixel a direction reads at ``step`` (a division: used where a
        walk starts, then :func:`next_pixel` and :func:`previous_pixel` step along)."""
        step = tl.where(direction >= 2, length - 1 - step, step)
        return tl.where(direction % 2 == 1, (step % height) * width + step // height, step)

    @triton.jit
    def walk(step, direction, height, width):
        """How a direction steps through the image from ``step`` on: where it is along its
        inner line (a row, or a column for the transposed directions), the line's length, the
        stride along it and the jump from a line's end to the next line's start."""
        transposed = direction % 2 == 1
        sign = tl.where(direction >= 2, -1, 1)
        inner_count = tl.where(transposed, height, width)
        inner_stride = tl.where(transposed, width, 1) * sign
        outer_stride = tl.where(transposed, 1, width) * sign
        return (step % inner_count, inner_count, inner_stride,
                outer_stride - inner_count * inner_stride)

    @triton.jit
    def next_pixel(pixel, inner, inner_count, inner_stride, wrap_jump):
        """The pixel (and position along the line) one step further along the direction."""
        inner += 1
        wrap = inner == inner_count
        return pixel + inner_stride + tl.where(wrap, wrap_jump, 0), tl.where(wrap, 0, inner)

    @triton.jit
    def previous_pixel(pixel, inner, inner_count, inner_stride, wrap_jump):
        """The pixel (and position along the line) one step back."""
        wrap = inner == 0
        return (pixel - inner_stride - tl.where(wrap, wrap_jump, 0),
                tl.where(wrap, inner_count - 1, inner - 1))

else:  # the names exist all the same, so that the kernel modules import; no kernel is defined
    softplus = pixel_at = walk = next_pixel = previous_pixel = None
