//! Einstein summation (`torch.einsum`), planned as diagonals, reductions, permutes and
//! batched matrix products.
//!
//! The planner is generic over [`EinsumOperand`], so the same plan runs on [`Tensor`]s (the
//! numeric path, through the GEMM kernel of [`Tensor::matmul`]) and on autograd variables
//! (`kiln_autograd::Var::einsum`, whose gradients then come from the primitives it composes).

use crate::element::Float;
use crate::tensor::Tensor;

/// The few primitives an einsum plan is executed with. Implemented for [`Tensor`] here and
/// for `Var` in kiln-autograd.
pub trait EinsumOperand: Clone {
    /// Element type.
    type Elem: Float;
    /// The operand's shape.
    fn einsum_shape(&self) -> Vec<usize>;
    /// Reorders the dimensions (`torch.permute`).
    #[must_use]
    fn einsum_permute(&self, dims: &[isize]) -> Self;
    /// Sums over the given (non-empty) axes, dropping them.
    #[must_use]
    fn einsum_sum(&self, axes: &[isize]) -> Self;
    /// Reshapes (copying if the strides require it).
    #[must_use]
    fn einsum_reshape(&self, shape: &[usize]) -> Self;
    /// Broadcasts size-1 dimensions to `shape`.
    #[must_use]
    fn einsum_expand(&self, shape: &[usize]) -> Self;
    /// Batched matrix product `[b, m, k] x [b, k, n] -> [b, m, n]`.
    #[must_use]
    fn einsum_matmul(&self, other: &Self) -> Self;
    /// Elementwise product with a constant, broadcasting (used to take diagonals).
    #[must_use]
    fn einsum_mul_constant(&self, mask: &Tensor<Self::Elem>) -> Self;
}

impl<E: Float> EinsumOperand for Tensor<E> {
    type Elem = E;
    fn einsum_shape(&self) -> Vec<usize> {
        self.shape().to_vec()
    }
    fn einsum_permute(&self, dims: &[isize]) -> Self {
        self.permute(dims)
    }
    fn einsum_sum(&self, axes: &[isize]) -> Self {
        self.sum(axes, false)
    }
    fn einsum_reshape(&self, shape: &[usize]) -> Self {
        self.reshape(shape)
    }
    fn einsum_expand(&self, shape: &[usize]) -> Self {
        self.expand(shape)
    }
    fn einsum_matmul(&self, other: &Self) -> Self {
        self.matmul(other)
    }
    fn einsum_mul_constant(&self, mask: &Tensor<E>) -> Self {
        self.mul(mask)
    }
}

/// A subscript label: a letter (its ASCII code) or the `j`-th broadcast dimension of `...`
/// (counted from the left of the widest ellipsis), coded as `ELLIPSIS + j`.
type Label = u32;
const ELLIPSIS: Label = 1000;

struct Equation {
    inputs: Vec<Vec<Label>>,
    output: Vec<Label>,
}

fn parse(equation: &str, shapes: &[Vec<usize>]) -> Equation {
    let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
    let bad = |why: String| -> ! { panic!("einsum: equation {equation:?} with operand shapes {shapes:?}: {why}") };
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != shapes.len() {
        bad(format!("{} subscript terms but {} operands", terms.len(), shapes.len()));
    }
    // Letters and the position of "..." in one term.
    let split_term = |term: &str| -> (Vec<char>, Option<usize>) {
        let mut letters = Vec::new();
        let mut ell = None;
        let mut rest = term;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("...") {
                if ell.is_some() {
                    bad(format!("term {term:?} has more than one ellipsis"));
                }
                ell = Some(letters.len());
                rest = r;
                continue;
            }
            let c = rest.chars().next().expect("non-empty");
            if !c.is_ascii_alphabetic() {
                bad(format!("invalid subscript {c:?} in term {term:?} (only letters and ... are allowed)"));
            }
            letters.push(c);
            rest = &rest[1..];
        }
        (letters, ell)
    };
    let parsed: Vec<(Vec<char>, Option<usize>)> = terms.iter().map(|t| split_term(t)).collect();
    let mut ell_dims = 0usize;
    for (i, (letters, ell)) in parsed.iter().enumerate() {
        let nd = shapes[i].len();
        match ell {
            None if letters.len() != nd => {
                bad(format!("term {:?} has {} subscripts but operand {i} has {nd} dimensions", terms[i], letters.len()))
            }
            Some(_) if letters.len() > nd => bad(format!(
                "term {:?} has {} subscripts but operand {i} has only {nd} dimensions",
                terms[i],
                letters.len()
            )),
            Some(_) => ell_dims = ell_dims.max(nd - letters.len()),
            None => {}
        }
    }
    let inputs: Vec<Vec<Label>> = parsed
        .iter()
        .enumerate()
        .map(|(i, (letters, ell))| {
            let mut labels: Vec<Label> = letters.iter().map(|&c| c as Label).collect();
            if let Some(p) = *ell {
                let n = shapes[i].len() - letters.len();
                let e: Vec<Label> = (ell_dims - n..ell_dims).map(|j| ELLIPSIS + j as Label).collect();
                labels.splice(p..p, e);
            }
            labels
        })
        .collect();
    let output = match rhs {
        Some(r) => {
            let (letters, ell) = split_term(r);
            for (k, &c) in letters.iter().enumerate() {
                if letters[..k].contains(&c) {
                    bad(format!("output subscript {c:?} appears more than once"));
                }
                if !parsed.iter().any(|(l, _)| l.contains(&c)) {
                    bad(format!("output subscript {c:?} does not appear in the inputs"));
                }
            }
            let mut labels: Vec<Label> = letters.iter().map(|&c| c as Label).collect();
            if let Some(p) = ell {
                labels.splice(p..p, (0..ell_dims).map(|j| ELLIPSIS + j as Label));
            }
            labels
        }
        None => {
            // Implicit mode: the broadcast dimensions, then the letters used exactly once,
            // in alphabetical (ASCII) order, as torch.einsum does.
            let mut once: Vec<char> = parsed
                .iter()
                .flat_map(|(l, _)| l.iter().copied())
                .filter(|c| parsed.iter().map(|(l, _)| l.iter().filter(|x| *x == c).count()).sum::<usize>() == 1)
                .collect();
            once.sort_unstable();
            let mut labels: Vec<Label> = (0..ell_dims).map(|j| ELLIPSIS + j as Label).collect();
            labels.extend(once.iter().map(|&c| c as Label));
            labels
        }
    };
    Equation { inputs, output }
}

/// Einstein summation over `operands` as `torch.einsum(equation, *operands)`, executed with
/// the primitives of [`EinsumOperand`]: repeated subscripts in one term take a diagonal,
/// subscripts needed nowhere else are summed first, and operands are then contracted left to
/// right, each pair as one batched matrix product.
///
/// Subscripts are letters; `...` stands for broadcast dimensions (aligned from the right);
/// without `->` the output is the broadcast dimensions then the letters used exactly once, in
/// alphabetical order. Dimensions sharing a letter must have equal sizes or size 1
/// (broadcast).
///
/// **Panics** naming the equation and the operand shapes when the equation is malformed, a
/// term's subscripts do not match its operand's rank, or sizes disagree.
#[must_use]
pub fn einsum_with<T: EinsumOperand>(equation: &str, operands: &[T]) -> T {
    let shapes: Vec<Vec<usize>> = operands.iter().map(|o| o.einsum_shape()).collect();
    assert!(!operands.is_empty(), "einsum: equation {equation:?}: at least one operand is needed");
    let eq = parse(equation, &shapes);
    // Global size of every label (1 broadcasts).
    let mut sizes: std::collections::BTreeMap<Label, usize> = std::collections::BTreeMap::new();
    for (labels, shape) in eq.inputs.iter().zip(&shapes) {
        for (&l, &n) in labels.iter().zip(shape) {
            let e = sizes.entry(l).or_insert(n);
            if *e == 1 {
                *e = n;
            } else if n != 1 && n != *e {
                let name = label_name(l);
                panic!("einsum: equation {equation:?} with operand shapes {shapes:?}: subscript {name} has sizes {} and {n}", *e);
            }
        }
    }
    let size = |l: &Label| sizes[l];
    let mut terms: Vec<(T, Vec<Label>)> = Vec::with_capacity(operands.len());
    for (i, (op, labels)) in operands.iter().zip(&eq.inputs).enumerate() {
        let (mut x, mut labels) = diagonals(op.clone(), labels.clone(), equation, &shapes);
        // Sum out labels that appear nowhere else (not in the output nor any other operand).
        let elsewhere = |l: &Label| {
            eq.output.contains(l) || eq.inputs.iter().enumerate().any(|(j, other)| j != i && other.contains(l))
        };
        let drop: Vec<usize> = (0..labels.len()).filter(|&d| !elsewhere(&labels[d])).collect();
        if !drop.is_empty() {
            x = x.einsum_sum(&drop.iter().map(|&d| d as isize).collect::<Vec<_>>());
            labels = labels.iter().filter(|l| elsewhere(l)).copied().collect();
        }
        terms.push((x, labels));
    }
    let mut iter = terms.into_iter();
    let (mut acc, mut acc_labels) = iter.next().expect("one operand");
    let rest: Vec<(T, Vec<Label>)> = iter.collect();
    for (k, (b, b_labels)) in rest.iter().enumerate() {
        let keep = |l: &Label| eq.output.contains(l) || rest[k + 1..].iter().any(|(_, ls)| ls.contains(l));
        let (c, c_labels) = contract_pair(&acc, &acc_labels, b, b_labels, &keep, &size);
        acc = c;
        acc_labels = c_labels;
    }
    // Final reductions and the output order.
    let drop: Vec<isize> =
        (0..acc_labels.len()).filter(|&d| !eq.output.contains(&acc_labels[d])).map(|d| d as isize).collect();
    if !drop.is_empty() {
        acc = acc.einsum_sum(&drop);
        acc_labels.retain(|l| eq.output.contains(l));
    }
    // Expand broadcast dims of a single operand to their global size.
    let full: Vec<usize> = acc_labels.iter().map(size).collect();
    if acc.einsum_shape() != full {
        acc = acc.einsum_expand(&full);
    }
    let perm: Vec<isize> = eq
        .output
        .iter()
        .map(|l| acc_labels.iter().position(|x| x == l).expect("output label present") as isize)
        .collect();
    if perm.iter().enumerate().any(|(i, &p)| p != i as isize) {
        acc = acc.einsum_permute(&perm);
    }
    acc
}

fn label_name(l: Label) -> String {
    if l >= ELLIPSIS {
        format!("... dimension {}", l - ELLIPSIS)
    } else {
        format!("{:?}", char::from_u32(l).unwrap_or('?'))
    }
}

/// Takes the diagonal for every subscript repeated inside one term (`ii->i`), as a product
/// with an identity mask and a sum, so that the same code differentiates.
fn diagonals<T: EinsumOperand>(
    mut x: T,
    mut labels: Vec<Label>,
    equation: &str,
    shapes: &[Vec<usize>],
) -> (T, Vec<Label>) {
    loop {
        let dup = (0..labels.len()).find_map(|q| labels[..q].iter().position(|&l| l == labels[q]).map(|p| (p, q)));
        let Some((p, q)) = dup else { return (x, labels) };
        let shape = x.einsum_shape();
        let n = shape[p];
        assert!(
            shape[q] == n,
            "einsum: equation {equation:?} with operand shapes {shapes:?}: repeated subscript {} has sizes {n} and {}",
            label_name(labels[p]),
            shape[q]
        );
        let mut mshape = vec![1usize; shape.len()];
        mshape[p] = n;
        mshape[q] = n;
        let (sp, sq) = if p < q { (n, 1) } else { (1, n) };
        let mut mask = vec![<T::Elem>::from_f64(0.0); n * n];
        for i in 0..n {
            mask[i * sp + i * sq] = <T::Elem>::from_f64(1.0);
        }
        x = x.einsum_mul_constant(&Tensor::from_vec(mask, &mshape)).einsum_sum(&[q as isize]);
        labels.remove(q);
    }
}

/// Contracts two labelled operands into one batched matrix product
/// `[batch, left, contracted] x [batch, contracted, right]`.
fn contract_pair<T: EinsumOperand>(
    a: &T,
    la: &[Label],
    b: &T,
    lb: &[Label],
    keep: &dyn Fn(&Label) -> bool,
    size: &dyn Fn(&Label) -> usize,
) -> (T, Vec<Label>) {
    // Labels of one side that are neither kept nor shared are summed out first.
    let reduce = |x: &T, lx: &[Label], other: &[Label]| -> (T, Vec<Label>) {
        let drop: Vec<isize> =
            (0..lx.len()).filter(|&d| !keep(&lx[d]) && !other.contains(&lx[d])).map(|d| d as isize).collect();
        if drop.is_empty() {
            (x.clone(), lx.to_vec())
        } else {
            (x.einsum_sum(&drop), lx.iter().filter(|l| keep(l) || other.contains(l)).copied().collect())
        }
    };
    let (a, la) = reduce(a, la, lb);
    let (b, lb) = reduce(b, lb, &la);
    let batch: Vec<Label> = la.iter().filter(|l| lb.contains(l) && keep(l)).copied().collect();
    let summed: Vec<Label> = la.iter().filter(|l| lb.contains(l) && !keep(l)).copied().collect();
    let left: Vec<Label> = la.iter().filter(|l| !lb.contains(l)).copied().collect();
    let right: Vec<Label> = lb.iter().filter(|l| !la.contains(l)).copied().collect();
    let arrange = |x: &T, lx: &[Label], order: &[&[Label]], dims3: [usize; 3]| -> T {
        let labels: Vec<Label> = order.iter().flat_map(|g| g.iter().copied()).collect();
        let perm: Vec<isize> = labels.iter().map(|l| lx.iter().position(|x| x == l).expect("label") as isize).collect();
        let mut y =
            if perm.iter().enumerate().any(|(i, &p)| p != i as isize) { x.einsum_permute(&perm) } else { x.clone() };
        let full: Vec<usize> = labels.iter().map(size).collect();
        if y.einsum_shape() != full {
            y = y.einsum_expand(&full);
        }
        y.einsum_reshape(&dims3)
    };
    let prod = |ls: &[Label]| ls.iter().map(size).product::<usize>();
    let (nb, nl, nk, nr) = (prod(&batch), prod(&left), prod(&summed), prod(&right));
    let a3 = arrange(&a, &la, &[&batch, &left, &summed], [nb, nl, nk]);
    let b3 = arrange(&b, &lb, &[&batch, &summed, &right], [nb, nk, nr]);
    let c = a3.einsum_matmul(&b3);
    let labels: Vec<Label> = batch.iter().chain(&left).chain(&right).copied().collect();
    let shape: Vec<usize> = labels.iter().map(size).collect();
    (c.einsum_reshape(&shape), labels)
}

impl<E: Float> Tensor<E> {
    /// Einstein summation, as `torch.einsum(equation, *operands)`: any equation made of
    /// diagonals, sums, permutes and (batched) matrix products, the products running on the
    /// GEMM kernel. See [`einsum_with`] for the rules.
    ///
    /// **Panics** naming the equation and the operand shapes on a malformed equation or
    /// mismatched sizes.
    ///
    /// ```
    /// use kiln_tensor::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    /// let b = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]);
    /// assert_eq!(Tensor::einsum("ij,jk->ik", &[&a, &b]).to_vec(), a.matmul(&b).to_vec());
    /// assert_eq!(Tensor::einsum("ij->ji", &[&a]).shape(), &[3, 2]);
    /// assert_eq!(Tensor::einsum("ij->", &[&a]).item(), 21.0);
    /// ```
    #[must_use]
    pub fn einsum(equation: &str, operands: &[&Tensor<E>]) -> Tensor<E> {
        let ops: Vec<Tensor<E>> = operands.iter().map(|&t| t.clone()).collect();
        einsum_with(equation, &ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn close(a: &Tensor<f64>, b: &Tensor<f64>) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.to_vec().iter().zip(b.to_vec()) {
            assert!((x - y).abs() < 1e-10, "{:?} vs {:?}", a.to_vec(), b.to_vec());
        }
    }

    /// The naive definition: loop over every assignment of all labels.
    fn reference(eq: &str, ops: &[&Tensor<f64>]) -> Tensor<f64> {
        let shapes: Vec<Vec<usize>> = ops.iter().map(|t| t.shape().to_vec()).collect();
        let e = parse(eq, &shapes);
        let mut sizes = std::collections::BTreeMap::new();
        for (ls, s) in e.inputs.iter().zip(&shapes) {
            for (l, n) in ls.iter().zip(s) {
                let v = sizes.entry(*l).or_insert(*n);
                *v = (*v).max(*n);
            }
        }
        let labels: Vec<Label> = sizes.keys().copied().collect();
        let out_shape: Vec<usize> = e.output.iter().map(|l| sizes[l]).collect();
        let mut out = vec![0.0; out_shape.iter().product()];
        let total: usize = labels.iter().map(|l| sizes[l]).product();
        for flat in 0..total {
            let mut rem = flat;
            let mut val = std::collections::BTreeMap::new();
            for l in labels.iter().rev() {
                val.insert(*l, rem % sizes[l]);
                rem /= sizes[l];
            }
            let mut p = 1.0;
            for (k, t) in ops.iter().enumerate() {
                let idx: Vec<usize> =
                    e.inputs[k].iter().zip(t.shape()).map(|(l, &n)| if n == 1 { 0 } else { val[l] }).collect();
                p *= t.get(&idx);
            }
            let mut o = 0;
            for l in &e.output {
                o = o * sizes[l] + val[l];
            }
            out[o] += p;
        }
        Tensor::from_vec(out, &out_shape)
    }

    #[test]
    fn matches_the_naive_definition_on_common_equations() {
        let mut rng = Rng::new(3);
        let mut r = |s: &[usize]| Tensor::<f64>::randn(s, &mut rng);
        let cases: Vec<(&str, Vec<Tensor<f64>>)> = vec![
            ("ij,jk->ik", vec![r(&[2, 3]), r(&[3, 4])]),
            ("ij,jk", vec![r(&[2, 3]), r(&[3, 4])]),
            ("bij,bjk->bik", vec![r(&[2, 2, 3]), r(&[2, 3, 4])]),
            ("bhld,bhmd->bhlm", vec![r(&[2, 2, 3, 4]), r(&[2, 2, 5, 4])]),
            ("i,i->", vec![r(&[5]), r(&[5])]),
            ("i,j->ij", vec![r(&[3]), r(&[4])]),
            ("ij->ji", vec![r(&[2, 3])]),
            ("ij->j", vec![r(&[2, 3])]),
            ("ii->i", vec![r(&[3, 3])]),
            ("ii", vec![r(&[3, 3])]),
            ("iij->ji", vec![r(&[2, 2, 3])]),
            ("ij,ij->ij", vec![r(&[2, 3]), r(&[2, 3])]),
            ("ij,kj->ki", vec![r(&[2, 3]), r(&[4, 3])]),
            ("abc,cd,de->bae", vec![r(&[2, 3, 2]), r(&[2, 3]), r(&[3, 2])]),
            ("...ij,...jk->...ik", vec![r(&[2, 1, 2, 3]), r(&[3, 3, 4])]),
            ("...ij->...ji", vec![r(&[2, 3, 4])]),
            ("i...,i...", vec![r(&[3, 2]), r(&[3, 2])]),
            ("bi,bi->b", vec![r(&[1, 3]), r(&[4, 3])]),
            ("Ab,bA", vec![r(&[2, 3]), r(&[3, 2])]),
        ];
        for (eq, ops) in &cases {
            let refs: Vec<&Tensor<f64>> = ops.iter().collect();
            let got = Tensor::einsum(eq, &refs);
            close(&got, &reference(eq, &refs));
        }
    }

    #[test]
    fn non_contiguous_operands() {
        let mut rng = Rng::new(5);
        let a = Tensor::<f64>::randn(&[3, 2], &mut rng).t();
        let b = Tensor::<f64>::randn(&[4, 3], &mut rng).t();
        close(&Tensor::einsum("ij,jk->ik", &[&a, &b]), &a.matmul(&b));
    }

    #[test]
    #[should_panic(
        expected = "einsum: equation \"ij,jk->ik\" with operand shapes [[2, 3], [4, 5]]: subscript 'j' has sizes 3 and 4"
    )]
    fn size_mismatch_names_equation_and_shapes() {
        let _ = Tensor::einsum("ij,jk->ik", &[&Tensor::<f32>::zeros(&[2, 3]), &Tensor::zeros(&[4, 5])]);
    }

    #[test]
    #[should_panic(expected = "2 subscript terms but 1 operands")]
    fn operand_count_mismatch() {
        let _ = Tensor::einsum("ij,jk->ik", &[&Tensor::<f32>::zeros(&[2, 3])]);
    }

    #[test]
    #[should_panic(expected = "term \"ijk\" has 3 subscripts but operand 0 has 2 dimensions")]
    fn rank_mismatch() {
        let _ = Tensor::einsum("ijk->i", &[&Tensor::<f32>::zeros(&[2, 3])]);
    }

    #[test]
    #[should_panic(expected = "output subscript 'z' does not appear in the inputs")]
    fn unknown_output_label() {
        let _ = Tensor::einsum("ij->z", &[&Tensor::<f32>::zeros(&[2, 3])]);
    }

    #[test]
    #[should_panic(expected = "invalid subscript '1'")]
    fn invalid_character() {
        let _ = Tensor::einsum("i1->i", &[&Tensor::<f32>::zeros(&[2, 3])]);
    }
}
