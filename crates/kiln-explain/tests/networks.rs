//! The methods on kiln-nn networks: a small MLP given as a `Forward` module, and a bag-of-
//! embeddings text classifier.

use kiln_autograd::Var;
use kiln_explain::{
    gradient_x_input, integrated_gradients, kernel_shap, lime, occlusion, saliency, smooth_grad, KernelShapConfig,
    LimeConfig, Segmented, TokenScores,
};
use kiln_nn::{Embedding, Forward, Linear, Sequential, Tanh};
use kiln_tensor::{Rng, Tensor};

fn mlp() -> Sequential<f64> {
    kiln_nn::init::manual_seed(3);
    Sequential::new_generic().add(Linear::<f64>::new_generic(6, 16)).add(Tanh).add(Linear::<f64>::new_generic(16, 3))
}

fn input() -> Tensor<f64> {
    Tensor::from_vec(vec![0.8, -1.2, 0.3, 1.5, -0.4, 0.9], &[6])
}

#[test]
fn integrated_gradients_completeness_error_shrinks_with_steps() {
    let net = mlp();
    let x = input();
    let zero = Tensor::zeros(&[6]);
    let errors: Vec<f64> = [2, 8, 32, 128].iter().map(|&s| integrated_gradients(&net, &x, 1, &zero, s).error).collect();
    for w in errors.windows(2) {
        assert!(w[1] < w[0], "errors do not shrink: {errors:?}");
    }
    // The trapezoidal rule: about 16x smaller for 4x the steps.
    assert!(errors[3] < errors[2] / 8.0, "{errors:?}");
    let ig = integrated_gradients(&net, &x, 1, &zero, 128);
    assert!(ig.relative_error() < 1e-3, "relative error {}", ig.relative_error());
    let fx = net.forward(&Var::constant(x.unsqueeze(0))).value().get(&[0, 1]);
    assert!((ig.prediction - fx).abs() < 1e-12);
}

#[test]
fn a_module_and_a_closure_give_the_same_attributions() {
    let net = mlp();
    let x = input();
    let closure = |v: &Var<f64>| net.forward(v);
    assert_eq!(saliency(&net, &x, 2).to_vec(), saliency(&closure, &x, 2).to_vec());
    let gxi = gradient_x_input(&net, &x, 2);
    let g = saliency(&net, &x, 2);
    assert_eq!(gxi.to_vec(), g.mul(&x).to_vec());
    // Check the gradient against central differences.
    let f = |t: &Tensor<f64>| net.forward(&Var::constant(t.unsqueeze(0))).value().get(&[0, 2]);
    for i in 0..6 {
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[i] += 1e-6;
        down[i] -= 1e-6;
        let fd = (f(&Tensor::from_vec(up, &[6])) - f(&Tensor::from_vec(down, &[6]))) / 2e-6;
        assert!((fd - g.get(&[i])).abs() < 1e-7, "feature {i}: {fd} vs {}", g.get(&[i]));
    }
    // With no noise SmoothGrad is the gradient.
    let sg = smooth_grad(&net, &x, 2, 3, 0.0, 0);
    for (a, b) in sg.to_vec().iter().zip(g.to_vec()) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn shap_values_of_an_mlp_sum_to_prediction_minus_expected_value() {
    let net = mlp();
    let x = input();
    let mut rng = Rng::new(1);
    let background: Tensor<f64> = Tensor::randn(&[5, 6], &mut rng);
    let shap = kernel_shap(&net, &Segmented::tabular(&x, &background), 0, &KernelShapConfig::default());
    assert!(shap.exact);
    let out = net.forward(&Var::constant(background.clone())).value();
    let expected = (0..5).map(|r| out.get(&[r, 0])).sum::<f64>() / 5.0;
    assert!((shap.expected_value - expected).abs() < 1e-12);
    assert!(shap.efficiency_error() < 1e-10, "efficiency error {}", shap.efficiency_error());
    // Sampling (well below the 62 coalitions) keeps the efficiency constraint exactly.
    let sampled = kernel_shap(
        &net,
        &Segmented::tabular(&x, &background),
        0,
        &KernelShapConfig { n_samples: Some(30), exact_max_segments: 0, ..Default::default() },
    );
    assert!(!sampled.exact);
    assert!(sampled.efficiency_error() < 1e-10);
}

#[test]
fn occlusion_of_an_image_model_through_a_module() {
    // A 1x6x6 image flattened into a linear layer whose weights are zero except on (2, 3).
    let fc = Linear::<f64>::new_generic(36, 1);
    fc.weight.set_value(Tensor::from_vec((0..36).map(|i| if i == 2 * 6 + 3 { 2.0 } else { 0.0 }).collect(), &[1, 36]));
    let model = |x: &Var<f64>| fc.forward(&x.reshape(&[x.size(0), 36]));
    let x = Tensor::full(&[1, 6, 6], 0.5);
    let a = occlusion(&model, &x, 0, &[2, 2], &[2, 2], 0.0);
    for r in 0..6 {
        for c in 0..6 {
            let want = if (2..4).contains(&r) && (2..4).contains(&c) { 1.0 } else { 0.0 };
            assert!((a.get(&[0, r, c]) - want).abs() < 1e-12);
        }
    }
}

/// A bag-of-embeddings sentiment model: mean of the token embeddings, then a linear layer.
struct BagModel {
    embedding: Embedding<f64>,
    fc: Linear<f64>,
}

impl Forward<f64> for BagModel {
    fn forward(&self, ids: &Var<f64>) -> Var<f64> {
        self.fc.forward(&self.embedding.forward(ids).mean(&[1], false))
    }
}

#[test]
fn text_shap_and_lime_score_tokens_and_leave_padding_alone() {
    kiln_nn::init::manual_seed(5);
    let model = BagModel { embedding: Embedding::new_generic(8, 4), fc: Linear::new_generic(4, 2) };
    let vocab = |id: usize| ["<pad>", "<unk>", "the", "film", "was", "great", "awful", "plot"][id].to_string();
    let ids = [2, 3, 4, 5, 0, 0];
    let input: Segmented<f64> = Segmented::text(&ids, 1, Some(0));
    let shap = kernel_shap(&model, &input, 1, &KernelShapConfig::default());
    assert_eq!(shap.values.len(), 4);
    assert!(shap.exact && shap.efficiency_error() < 1e-12);
    // The expected value is the output with every word replaced by <unk> (padding kept).
    let masked = Tensor::from_vec(vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0], &[1, 6]);
    let f_masked = model.forward(&Var::constant(masked)).value().get(&[0, 1]);
    assert!((shap.expected_value - f_masked).abs() < 1e-12);
    let scores = TokenScores::from_segments(&input, &shap.values, vocab);
    let words: Vec<&str> = scores.tokens.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(words, ["the", "film", "was", "great"]);
    assert_eq!(scores.to_string().lines().count(), 4);

    let exp = lime(&model, &input, 1, &LimeConfig { n_samples: 300, ..Default::default() });
    assert_eq!(exp.values.len(), 4);
    assert!(exp.score > 0.5, "R² {}", exp.score);
    // LIME and SHAP agree on the most important word.
    let top_shap = scores.top(1)[0].0.clone();
    let top_lime = vocab(ids[exp.top(1)[0].0]);
    assert_eq!(top_shap, top_lime);
}
