//! Linear regression by gradient descent, checked against the closed-form least-squares
//! solution: predict an iris flower's petal width from its sepal length, sepal width and
//! petal length (the 150 real samples of `iris.csv`, read from `KILN_DATA_DIR`, default
//! `../shared/data`).
//!
//!     cargo run --release --example linear_regression

use kiln::autograd::Var;
use kiln::nn::functional::{mse_loss, Reduction};
use kiln::nn::{Forward, Linear, Module};
use kiln::optim::{Optimizer, SGDConfig, SGD};
use kiln::tensor::Tensor;

/// Reads iris.csv (a scikit-learn header line, then `f0,f1,f2,f3,label` rows).
fn iris() -> Result<Vec<[f64; 4]>, String> {
    let dir = std::env::var("KILN_DATA_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").into());
    let path = std::path::Path::new(&dir).join("sklearn-small/iris.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            let v: Vec<f64> = l
                .split(',')
                .take(4)
                .map(|c| c.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 2))?;
            Ok([v[0], v[1], v[2], v[3]])
        })
        .collect()
}

/// Solves the normal equations (XᵀX) w = Xᵀy (with a bias column) by Gaussian elimination.
fn least_squares(x: &[[f64; 3]], y: &[f64]) -> [f64; 4] {
    let mut a = [[0.0; 5]; 4];
    for (xi, &yi) in x.iter().zip(y) {
        let r = [xi[0], xi[1], xi[2], 1.0];
        for i in 0..4 {
            for j in 0..4 {
                a[i][j] += r[i] * r[j];
            }
            a[i][4] += r[i] * yi;
        }
    }
    for c in 0..4 {
        let p = (c..4).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        for r in 0..4 {
            if r != c {
                let f = a[r][c] / a[c][c];
                for k in c..5 {
                    a[r][k] -= f * a[c][k];
                }
            }
        }
    }
    [a[0][4] / a[0][0], a[1][4] / a[1][1], a[2][4] / a[2][2], a[3][4] / a[3][3]]
}

fn main() {
    let rows = match iris() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot read the iris data ({e}); set KILN_DATA_DIR to the shared data folder");
            std::process::exit(2);
        }
    };
    let n = rows.len();
    let feats: Vec<[f64; 3]> = rows.iter().map(|r| [r[0], r[1], r[2]]).collect();
    let target: Vec<f64> = rows.iter().map(|r| r[3]).collect();
    let exact = least_squares(&feats, &target);

    kiln::nn::init::manual_seed(0);
    // ANCHOR: gradient_descent
    let x = Var::constant(Tensor::<f64>::from_vec(feats.iter().flatten().copied().collect(), &[n, 3]));
    let y = Var::constant(Tensor::from_vec(target.clone(), &[n, 1]));
    let model: Linear<f64> = Linear::new_generic(3, 1);
    let mut opt = SGD::new(model.parameters(), SGDConfig { lr: 0.02, momentum: 0.9, ..Default::default() });
    for epoch in 0..=20_000 {
        opt.zero_grad();
        let loss = mse_loss(&model.forward(&x), &y, Reduction::Mean);
        if epoch % 5000 == 0 {
            println!("epoch {epoch:>5}: mse {:.6}", loss.item());
        }
        loss.backward();
        opt.step();
    }
    // ANCHOR_END: gradient_descent
    let w = model.weight.value().to_vec();
    let b = model.bias.as_ref().unwrap().value().item();
    println!("gradient descent: w = [{:.5}, {:.5}, {:.5}], b = {:.5}", w[0], w[1], w[2], b);
    println!("least squares:    w = [{:.5}, {:.5}, {:.5}], b = {:.5}", exact[0], exact[1], exact[2], exact[3]);
    let err = w.iter().chain(std::iter::once(&b)).zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("largest difference: {err:.2e}");
}
