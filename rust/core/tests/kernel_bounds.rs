//! The public kernels that guard unsafe code, called from outside the crate
//! with sizes whose products wrap around `usize` and with buffers that are
//! too short: each must refuse cleanly (a panic naming the problem, before
//! any memory is touched), never read or write out of bounds. In a release
//! build without overflow checks a wrapped size would otherwise pass the
//! bounds checks.

use ferrograd::kernels::conv::{Init, Out, Seg, Tiles};
use ferrograd::kernels::gemm::{gemm, gemm_ldb, gemm_rows, pad_rows};
use ferrograd::kernels::par_chunks2;
use ferrograd::kernels::team::with_team;
use ferrograd::kernels::transpose::transpose;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message `f` panicked with; fails the test if it returned.
fn refusal(f: impl FnOnce()) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => panic!("expected a refusal, but the call went ahead"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

fn assert_refused(msg: String, want: &str) {
    assert!(msg.contains(want), "refused with {msg:?}, expected it to mention {want:?}");
}

const BIG: usize = 1 << 32; // BIG * BIG wraps to 0 on 64-bit targets

#[test]
fn gemm_refuses_wrapping_sizes() {
    let (a, b, mut c) = ([0.0f32; 4], [0.0f32; 4], [0.0f32; 4]);
    // m * k, k * n and m * n all wrap to 0: empty operands would pass.
    assert_refused(refusal(|| gemm(false, false, BIG, BIG, BIG, 1.0, &[], &[], 0.0, &mut [])), "overflow");
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        // Only A's size wraps.
        assert_refused(refusal(|| gemm(ta, tb, BIG, 1, BIG, 1.0, &a, &b, 0.0, &mut c)), "overflow");
        // Only C's size wraps (A and B hold enough for k = 0).
        assert_refused(refusal(|| gemm(ta, tb, BIG, BIG, 0, 1.0, &a, &b, 0.0, &mut c)), "overflow");
    }
    // B's extent `(rows - 1) * ldb + cols` wraps: k = 3 rows, ldb = 2^63.
    let ldb = 1usize << 63;
    assert_refused(refusal(|| gemm_ldb(false, false, 1, 1, 3, 1.0, &a, &b, ldb, 0.0, &mut c)), "overflow");
    // A stride beyond isize::MAX (one row of B, so no extent overflows).
    assert_refused(
        refusal(|| gemm_ldb(false, false, 1, 1, 1, 1.0, &a, &b, usize::MAX, 0.0, &mut c)),
        "isize::MAX",
    );
    // The rows of a chunk must lie inside `m`, also when `row0 + rows` wraps.
    assert_refused(
        refusal(|| gemm_rows(false, false, 2, 2, 2, 1.0, &a, &b, 2, 0.0, usize::MAX, &mut c)),
        "beyond m",
    );
    let mut out = [0.0f32; 8];
    assert_refused(refusal(|| pad_rows(&a, BIG, BIG, BIG, &mut out)), "overflow");
}

#[test]
fn gemm_refuses_short_buffers() {
    let (a, b) = ([1.0f64; 6], [1.0f64; 6]);
    let mut c = [0.0f64; 4];
    assert_refused(refusal(|| gemm(false, false, 2, 2, 4, 1.0, &a, &b, 0.0, &mut c)), "A has 6");
    assert_refused(refusal(|| gemm(false, false, 2, 2, 3, 1.0, &a, &b[..5], 0.0, &mut c)), "B has 5");
    assert_refused(refusal(|| gemm(false, false, 2, 2, 3, 1.0, &a, &b, 0.0, &mut c[..3])), "C has 3");
    assert_refused(refusal(|| gemm_ldb(false, true, 2, 2, 3, 1.0, &a, &b, 2, 0.0, &mut c)), "ldb");
    // The sizes that fit still work.
    gemm(false, false, 2, 2, 3, 1.0, &a, &b, 0.0, &mut c);
    assert_eq!(c, [3.0; 4]);
}

#[test]
fn transpose_refuses_wrapping_and_short_buffers() {
    let src = [1.0f32; 4];
    let mut dst = [0.0f32; 4];
    // `(rows - 1) * src_rs + cols` wraps to 0.
    assert_refused(refusal(|| transpose(2, 1, &[], usize::MAX, &mut dst, 2)), "source too short");
    // `(cols - 1) * dst_rs + rows` wraps to 1.
    assert_refused(refusal(|| transpose(1, 2, &src, 2, &mut dst[..1], usize::MAX)), "destination too short");
    assert_refused(refusal(|| transpose(2, 2, &src[..3], 2, &mut dst, 2)), "source too short");
    transpose(2, 2, &[1.0f32, 2.0, 3.0, 4.0], 2, &mut dst, 2);
    assert_eq!(dst, [1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn conv_tile_refuses_wrapping_and_short_buffers() {
    for tiles in [Tiles::<f32>::detect(), Tiles::<f32>::baseline()] {
        let width = tiles.lanes();
        let a = vec![1.0f32; 64];
        let b = vec![1.0f32; 4 * width];
        let seg = [Seg { a: 0, b: 0, len: 2 }];
        // Two rows whose stride makes `(rows - 1) * a_rs` wrap past the end.
        let mut acc = vec![0.0f32; 2 * width];
        let msg = refusal(|| {
            let mut out = Out::dense(&mut acc, width);
            tiles.run(2, 1, &mut out, Init::Zero, false, &a, usize::MAX, 1, &b, width, &seg)
        });
        assert_refused(msg, "out of bounds");
        // Steps whose stride wraps in B.
        let msg = refusal(|| {
            let mut out = Out::dense(&mut acc, width);
            tiles.run(1, 1, &mut out, Init::Zero, false, &a, 1, 1, &b, usize::MAX, &seg)
        });
        assert_refused(msg, "out of bounds");
        // Output rows whose stride wraps: `(rows - 1) * rs + live` is small.
        let msg = refusal(|| {
            let mut out = Out { data: &mut acc, rs: usize::MAX, live: width };
            tiles.run(2, 1, &mut out, Init::Zero, false, &a, 1, 1, &b, width, &seg)
        });
        assert_refused(msg, "output rows out of bounds");
        // A bias row shorter than the tile.
        let msg = refusal(|| {
            let mut out = Out::dense(&mut acc, width);
            tiles.run(1, 1, &mut out, Init::Row(&b[..width - 1]), false, &a, 1, 1, &b, width, &seg)
        });
        assert_refused(msg, "initial row too short");
        // A tile shape with no kernel.
        let msg = refusal(|| {
            let mut out = Out::dense(&mut acc, width);
            tiles.run(0, 1, &mut out, Init::Zero, false, &a, 1, 1, &b, width, &seg)
        });
        assert_refused(msg, "no kernel");
        // A segment of length 0 reaches nothing, wherever it points.
        let far = [Seg { a: usize::MAX, b: usize::MAX, len: 0 }];
        let mut out = Out::dense(&mut acc, width);
        tiles.run(1, 1, &mut out, Init::Zero, false, &a, 1, 1, &b, width, &far);
        assert!(acc[..width].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn par_chunks2_refuses_wrapping_chunk_sizes() {
    // `(count - 1) * cb` wraps to 0 with 3 chunks of `a`: without the
    // check, chunks 0 and 2 of `b` would overlap on a team.
    let cb = 1usize << 63;
    with_team(2, || {
        let (mut a, mut b) = ([0u8; 3], [0u8; 4]);
        let msg = refusal(|| par_chunks2(&mut a, 1, &mut b, cb, |_, _, _| {}));
        assert_refused(msg, "fewer chunks");
    });
}
