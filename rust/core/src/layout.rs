//! How one sample's values are ordered in a buffer: the one notion the
//! kernels and the layers share, kept below both (the layers re-export it as
//! `layers::Layout` and `layers::at`).

/// How one sample's values are ordered in an activation or gradient buffer.
/// Shapes are always given in torch's order (`(C, H, W)`); with
/// [`Layout::ChannelsLast`] the buffer holds `(H, W, C)` instead. Per-sample
/// shapes of rank 1 have one order only and are always `Planar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Torch's order: channel planes (what the model takes and returns).
    Planar,
    /// Channels innermost: what the convolution kernels read and write,
    /// kept between layers that can work on it.
    ChannelsLast,
}

/// Where element `(c, s)` of one sample lies (`c < channels`, `s` the
/// flat spatial index, `< spatial`) in `layout`.
#[inline(always)]
pub fn at(layout: Layout, channels: usize, spatial: usize, c: usize, s: usize) -> usize {
    match layout {
        Layout::Planar => c * spatial + s,
        Layout::ChannelsLast => s * channels + c,
    }
}
