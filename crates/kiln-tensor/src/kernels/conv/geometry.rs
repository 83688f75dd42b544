//! Shape checks and the geometry of one convolution as the GEMM lowering sees it.

use super::{conv_out_len, conv_transpose_out_len, Conv2dParams, ConvTranspose2dParams};

pub(super) fn check_params(op: &str, p: &Conv2dParams) {
    assert!(p.groups > 0, "{op}: groups must be > 0, got 0");
    assert!(p.stride[0] > 0 && p.stride[1] > 0, "{op}: stride must be > 0, got {:?}", p.stride);
    assert!(p.dilation[0] > 0 && p.dilation[1] > 0, "{op}: dilation must be > 0, got {:?}", p.dilation);
}

pub(super) fn check_len<E>(op: &str, what: &str, data: &[E], shape: &[usize]) {
    let want: usize = shape.iter().product();
    assert!(data.len() == want, "{op}: {what} holds {} elements but its shape {shape:?} needs {want}", data.len());
}

pub(super) fn check_bias<E>(op: &str, bias: &[E], channels: usize, w_shape: &[usize]) {
    assert!(
        bias.len() == channels,
        "{op}: bias has {} elements but weight {w_shape:?} gives {channels} output channels",
        bias.len()
    );
}

pub(super) fn check_out_shape(
    op: &str,
    got: impl AsRef<[usize]>,
    want: impl AsRef<[usize]>,
    x: impl AsRef<[usize]>,
    w: impl AsRef<[usize]>,
) {
    let (got, want) = (got.as_ref(), want.as_ref());
    assert!(
        got == want,
        "{op}: grad_out {got:?} is not the output shape {want:?} of input {:?} with weight {:?}",
        x.as_ref(),
        w.as_ref()
    );
}

/// The geometry of one convolution as the kernels see it: a convolution from `groups * c`
/// input channels of `h x w` to `groups * oc` output channels of `oh x ow`. The output size is
/// stored, not derived, because a transposed convolution with `output_padding` runs the same
/// kernels with an "input" larger than the one the formula would give back.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    /// Input channels per group.
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Output channels per group.
    pub(super) oc: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) groups: usize,
    pub(super) stride: [usize; 2],
    pub(super) pad: [usize; 2],
    pub(super) dil: [usize; 2],
}

impl Geom {
    /// Rows of the unrolled input of one group.
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub(super) fn in_plane(&self) -> usize {
        self.h * self.w
    }
    pub(super) fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
    pub(super) fn in_sample(&self) -> usize {
        self.groups * self.c * self.in_plane()
    }
    pub(super) fn out_sample(&self) -> usize {
        self.groups * self.oc * self.out_plane()
    }
    /// A 1x1 kernel with unit stride and no padding reads the input as its own im2col matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.oh == self.h
            && self.ow == self.w
    }
    pub(super) fn col_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.k() * self.out_plane()
        }
    }
    /// Multiply-adds of one GEMM pass over the whole batch.
    pub(super) fn flops(&self, n: usize) -> usize {
        n.saturating_mul(self.groups * self.oc).saturating_mul(self.k()).saturating_mul(self.out_plane())
    }
}

pub(super) fn conv_geom(op: &str, x: [usize; 4], w: [usize; 4], p: &Conv2dParams) -> (Geom, [usize; 4]) {
    check_params(op, p);
    assert!(w[2] > 0 && w[3] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(
        x[1] == w[1] * p.groups,
        "{op}: input {x:?} has {} channels but weight {w:?} expects {} x groups {}",
        x[1],
        w[1],
        p.groups
    );
    assert!(
        w[0].is_multiple_of(p.groups),
        "{op}: weight {w:?} has {} output channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    let f = |a: usize| {
        conv_out_len(x[2 + a], w[2 + a], p.stride[a], p.padding[a], p.dilation[a]).unwrap_or_else(|| {
            panic!(
                "{op}: input {x:?} padded by {:?} is smaller than kernel {:?} dilated by {:?}",
                p.padding,
                [w[2], w[3]],
                p.dilation
            )
        })
    };
    let (oh, ow) = (f(0), f(1));
    let g = Geom {
        c: w[1],
        h: x[2],
        w: x[3],
        oc: w[0] / p.groups,
        oh,
        ow,
        kh: w[2],
        kw: w[3],
        groups: p.groups,
        stride: p.stride,
        pad: p.padding,
        dil: p.dilation,
    };
    (g, [x[0], w[0], oh, ow])
}

/// Geometry of the convolution a transposed convolution is the input gradient of: its input is
/// the transposed convolution's output and vice versa.
pub(super) fn transpose_geom(op: &str, x: [usize; 4], w: [usize; 4], p: &ConvTranspose2dParams) -> (Geom, [usize; 4]) {
    check_params(op, &p.conv());
    assert!(w[2] > 0 && w[3] > 0, "{op}: weight {w:?} has an empty kernel");
    assert!(x[1] == w[0], "{op}: input {x:?} has {} channels but weight {w:?} expects {}", x[1], w[0]);
    assert!(
        w[0].is_multiple_of(p.groups),
        "{op}: weight {w:?} has {} input channels, not divisible by groups {}",
        w[0],
        p.groups
    );
    for a in 0..2 {
        assert!(
            p.output_padding[a] < p.stride[a] || p.output_padding[a] < p.dilation[a],
            "{op}: output_padding {:?} must be smaller than either stride {:?} or dilation {:?}",
            p.output_padding,
            p.stride,
            p.dilation
        );
    }
    let f = |a: usize| {
        conv_transpose_out_len(x[2 + a], w[2 + a], p.stride[a], p.padding[a], p.output_padding[a], p.dilation[a])
            .unwrap_or_else(|| {
                panic!(
                    "{op}: input {x:?} with weight {w:?}, stride {:?}, padding {:?}, dilation {:?} \
                     gives an empty output",
                    p.stride, p.padding, p.dilation
                )
            })
    };
    let (oh, ow) = (f(0), f(1));
    let g = Geom {
        c: w[1],
        h: oh,
        w: ow,
        oc: w[0] / p.groups,
        oh: x[2],
        ow: x[3],
        kh: w[2],
        kw: w[3],
        groups: p.groups,
        stride: p.stride,
        pad: p.padding,
        dil: p.dilation,
    };
    (g, [x[0], w[1] * p.groups, oh, ow])
}
