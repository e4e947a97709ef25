//! Merge layers against hand-computed values.

use super::*;

fn fwd(m: &dyn Merge<f64>, xs: &[&[f64]], shapes: &[&[usize]], n: usize) -> Vec<f64> {
    let out = m.output_shape(shapes).expect("shape");
    let mut y = vec![0.0; n * out.iter().product::<usize>()];
    m.forward(MergeForward { xs, y: &mut y, n, in_shapes: shapes, out_shape: &out });
    y
}

fn bwd(m: &dyn Merge<f64>, i: usize, xs: &[&[f64]], shapes: &[&[usize]], dy: &[f64], n: usize) -> Vec<f64> {
    let out = m.output_shape(shapes).expect("shape");
    let mut dx = vec![1.0; xs[i].len()];
    m.backward(MergeBackward {
        input: i,
        xs,
        dy,
        dx: &mut dx,
        accumulate: true,
        n,
        in_shapes: shapes,
        out_shape: &out,
    });
    dx
}

#[test]
fn elementwise_merges() {
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 3.0]);
    let xs: [&[f64]; 2] = [&a, &b];
    let sh: [&[usize]; 2] = [&[2], &[2]];
    assert_eq!(fwd(&Add, &xs, &sh, 2), [1.5, 1.0, 5.0, 7.0]);
    assert_eq!(fwd(&Subtract, &xs, &sh, 2), [0.5, 3.0, 1.0, 1.0]);
    assert_eq!(fwd(&Multiply, &xs, &sh, 2), [0.5, -2.0, 6.0, 12.0]);
    assert_eq!(fwd(&Average, &xs, &sh, 2), [0.75, 0.5, 2.5, 3.5]);
    let dy = [1.0, 2.0, 3.0, 4.0];
    // accumulate onto ones
    assert_eq!(bwd(&Subtract, 1, &xs, &sh, &dy, 2), [0.0, -1.0, -2.0, -3.0]);
    assert_eq!(bwd(&Multiply, 0, &xs, &sh, &dy, 2), [1.5, -1.0, 7.0, 13.0]);
    assert_eq!(bwd(&Average, 1, &xs, &sh, &dy, 2), [1.5, 2.0, 2.5, 3.0]);
    let bad: [&[usize]; 2] = [&[2], &[3]];
    let e = <Add as Merge<f64>>::output_shape(&Add, &bad).unwrap_err();
    assert!(e.message.contains("[[2], [3]]"), "{}", e.message);
    assert!(<Subtract as Merge<f64>>::output_shape(&Subtract, &[&[2], &[2], &[2]]).is_err());
}

#[test]
fn concatenate_axes() {
    // Two samples of (2, 2) and (2, 1): axis 2 (= -1) joins rows, axis 1 stacks.
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let b = [10.0, 20.0, 30.0, 40.0];
    let xs: [&[f64]; 2] = [&a, &b];
    let sh: [&[usize]; 2] = [&[2, 2], &[2, 1]];
    for axis in [2, -1] {
        let c = Concatenate { axis };
        assert_eq!(c_out(&c, &sh), [2, 3]);
        assert_eq!(fwd(&c, &xs, &sh, 2), [1.0, 2.0, 10.0, 3.0, 4.0, 20.0, 5.0, 6.0, 30.0, 7.0, 8.0, 40.0]);
        let dy: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(bwd(&c, 1, &xs, &sh, &dy, 2), [3.0, 6.0, 9.0, 12.0]);
    }
    let sh1: [&[usize]; 2] = [&[2, 2], &[1, 2]];
    let c = Concatenate { axis: 1 };
    assert_eq!(c_out(&c, &sh1), [3, 2]);
    assert_eq!(fwd(&c, &xs, &sh1, 2), [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 5.0, 6.0, 7.0, 8.0, 30.0, 40.0]);
    assert!(<Concatenate as Merge<f64>>::output_shape(&Concatenate { axis: 0 }, &sh1).is_err());
    assert!(<Concatenate as Merge<f64>>::output_shape(&Concatenate { axis: 3 }, &sh1).is_err());
    assert!(<Concatenate as Merge<f64>>::output_shape(&c, &sh).is_err());
}

fn c_out(c: &Concatenate, sh: &[&[usize]]) -> Vec<usize> {
    <Concatenate as Merge<f64>>::output_shape(c, sh).expect("shape")
}
