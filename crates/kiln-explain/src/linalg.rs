//! Weighted least squares for Kernel SHAP and LIME: small dense systems, solved in f64.

/// The solution of `a x = b` for an `n x n` row-major `a`, by Gaussian elimination with partial
/// pivoting; `None` when `a` is singular (a pivot below `1e-12` of the largest diagonal).
pub(crate) fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    debug_assert_eq!(a.len(), n * n);
    let scale = (0..n).map(|i| a[i * n + i].abs()).fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[piv * n + col].abs() <= 1e-12 * scale {
            return None;
        }
        if piv != col {
            for k in 0..n {
                a.swap(piv * n + k, col * n + k);
            }
            b.swap(piv, col);
        }
        let p = a[col * n + col];
        for r in col + 1..n {
            let f = a[r * n + col] / p;
            if f != 0.0 {
                for k in col..n {
                    a[r * n + k] -= f * a[col * n + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    Some(x)
}

/// A weighted ridge regression fit: `y ≈ intercept + X β`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fit {
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    /// The weighted coefficient of determination R² on the fitted data.
    pub score: f64,
}

/// Minimises `Σ wᵢ (yᵢ − c − xᵢ·β)² + alpha |β|²` over `β` (and `c` when `fit_intercept`,
/// unpenalised, by centring on the weighted means as scikit-learn's `Ridge` does).
///
/// `x` holds `y.len()` rows of `d` values. When the normal equations are singular (a feature
/// that never varies) a ridge of `1e-10` of their scale is added, which gives the least-norm
/// solution in the limit.
pub(crate) fn weighted_ridge(x: &[f64], d: usize, y: &[f64], w: &[f64], alpha: f64, fit_intercept: bool) -> Fit {
    let n = y.len();
    debug_assert_eq!(x.len(), n * d);
    let wsum: f64 = w.iter().sum();
    let (xm, ym) = if fit_intercept && wsum > 0.0 {
        let mut xm = vec![0.0; d];
        for (row, &wi) in x.chunks(d.max(1)).zip(w) {
            for (m, &v) in xm.iter_mut().zip(row) {
                *m += wi * v;
            }
        }
        xm.iter_mut().for_each(|m| *m /= wsum);
        (xm, y.iter().zip(w).map(|(y, w)| y * w).sum::<f64>() / wsum)
    } else {
        (vec![0.0; d], 0.0)
    };
    let mut a = vec![0.0; d * d];
    let mut b = vec![0.0; d];
    let mut xc = vec![0.0; d];
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        for k in 0..d {
            xc[k] = row[k] - xm[k];
        }
        let (wi, yi) = (w[i], y[i] - ym);
        for r in 0..d {
            let v = wi * xc[r];
            if v == 0.0 {
                continue;
            }
            b[r] += v * yi;
            for c in r..d {
                a[r * d + c] += v * xc[c];
            }
        }
    }
    for r in 0..d {
        for c in 0..r {
            a[r * d + c] = a[c * d + r];
        }
        a[r * d + r] += alpha;
    }
    let beta = solve(a.clone(), b.clone()).unwrap_or_else(|| {
        let scale = (0..d).map(|i| a[i * d + i].abs()).fold(0.0f64, f64::max).max(1e-300);
        for i in 0..d {
            a[i * d + i] += 1e-10 * scale;
        }
        solve(a, b).unwrap_or_else(|| vec![0.0; d])
    });
    let intercept = ym - beta.iter().zip(&xm).map(|(b, m)| b * m).sum::<f64>();
    // Weighted R², as sklearn's `score(X, y, sample_weight)`.
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    let ybar = if wsum > 0.0 { y.iter().zip(w).map(|(y, w)| y * w).sum::<f64>() / wsum } else { 0.0 };
    for i in 0..n {
        let pred = intercept + x[i * d..(i + 1) * d].iter().zip(&beta).map(|(x, b)| x * b).sum::<f64>();
        ss_res += w[i] * (y[i] - pred).powi(2);
        ss_tot += w[i] * (y[i] - ybar).powi(2);
    }
    let score = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else if ss_res == 0.0 {
        1.0
    } else {
        0.0
    };
    Fit { coefficients: beta, intercept, score }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_recovers_a_known_solution() {
        let a = vec![0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0];
        let x = [1.0, -2.0, 0.5];
        let b: Vec<f64> = (0..3).map(|r| (0..3).map(|c| a[r * 3 + c] * x[c]).sum()).collect();
        let got = solve(a, b).unwrap();
        for (g, w) in got.iter().zip(x) {
            assert!((g - w).abs() < 1e-12);
        }
        assert!(solve(vec![1.0, 2.0, 2.0, 4.0], vec![1.0, 2.0]).is_none());
    }

    #[test]
    fn weighted_least_squares_fits_an_exact_linear_relation() {
        let x: Vec<f64> = vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 1.0];
        let y: Vec<f64> = x.chunks(2).map(|r| 3.0 + 2.0 * r[0] - r[1]).collect();
        let fit = weighted_ridge(&x, 2, &y, &[1.0, 2.0, 0.5, 1.0, 3.0], 0.0, true);
        assert!((fit.intercept - 3.0).abs() < 1e-12);
        assert!((fit.coefficients[0] - 2.0).abs() < 1e-12 && (fit.coefficients[1] + 1.0).abs() < 1e-12);
        assert!((fit.score - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ridge_shrinks_and_a_constant_feature_gets_zero() {
        let x: Vec<f64> = vec![0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0];
        let y = [0.0, 1.0, 2.0, 3.0];
        let w = [1.0; 4];
        let free = weighted_ridge(&x, 2, &y, &w, 0.0, true);
        assert!((free.coefficients[0] - 1.0).abs() < 1e-9 && free.coefficients[1].abs() < 1e-9);
        let shrunk = weighted_ridge(&x, 2, &y, &w, 1.0, true);
        // sum (x - mean)^2 = 5, so beta = 5 / (5 + 1).
        assert!((shrunk.coefficients[0] - 5.0 / 6.0).abs() < 1e-12);
    }
}
