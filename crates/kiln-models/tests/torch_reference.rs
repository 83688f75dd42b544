//! The models against PyTorch: torchvision's architectures written out in plain torch.nn
//! (`fixtures/make_fixtures.py`) with random weights, eval-mode outputs compared, and the key
//! lists of the full-size models compared with torchvision's.

use std::path::PathBuf;

use kiln_models::{ResNetConfig, VitConfig};
use kiln_nn::{load_mapped, load_state_dict_file, Forward, KeyMap, Module, StateDict, Tensor, Var};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
}

/// The case's input, expected output and the model's state dict (keys without `model.`).
fn case(name: &str) -> (Tensor<f32>, Tensor<f32>, StateDict<f32>) {
    let mut all: StateDict<f32> = load_state_dict_file(fixture(&format!("{name}.safetensors"))).expect("fixture");
    let input = all.remove("input").expect("input");
    let output = all.remove("output").expect("output");
    let state =
        all.into_iter().map(|(k, t)| (k.strip_prefix("model.").expect("model. prefix").to_string(), t)).collect();
    (input, output, state)
}

fn max_abs_diff(a: &Tensor<f32>, b: &Tensor<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.to_vec().iter().zip(b.to_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn resnet_config(v: &Value) -> ResNetConfig {
    let c = &v["config"];
    let layers: Vec<usize> = c["layers"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    ResNetConfig {
        layers: layers.try_into().expect("four stages"),
        width: usize_of(c, "width"),
        num_classes: usize_of(c, "num_classes"),
    }
}

fn check_resnet(name: &str) {
    let meta = json(&format!("{name}.json"));
    let (input, expected, state) = case(name);
    let mut model = resnet_config(&meta).build::<f32>().unwrap();
    assert_eq!(model.num_parameters(), usize_of(&meta, "num_parameters"));
    model.load_state_dict(&state, true).expect("torchvision's keys and shapes");
    model.eval();
    let y = model.forward(&Var::constant(input));
    let d = max_abs_diff(&y.value(), &expected);
    assert!(d < 1e-4, "{name}: max |kiln - torch| = {d}");
}

#[test]
fn resnet18_matches_pytorch_in_eval_mode() {
    check_resnet("resnet18_w4");
}

#[test]
fn resnet34_matches_pytorch_in_eval_mode() {
    check_resnet("resnet34_w4");
}

#[test]
fn a_torch_save_checkpoint_loads_through_the_pt_reader() {
    let meta = json("resnet18_w4.json");
    let (input, expected, _) = case("resnet18_w4");
    let mut model = resnet_config(&meta).build::<f32>().unwrap();
    let report =
        load_mapped(&mut model, fixture("resnet18_w4.pt"), &KeyMap::new(), true).expect("a torch.save state_dict");
    assert_eq!(report.matched.len(), model.state_dict().len());
    model.eval();
    let d = max_abs_diff(&model.forward(&Var::constant(input)).value(), &expected);
    assert!(d < 1e-4, "max |kiln - torch| = {d}");
}

#[test]
fn vit_matches_pytorch_in_eval_mode() {
    let meta = json("vit_tiny.json");
    let c = &meta["config"];
    let config = VitConfig {
        image_size: usize_of(c, "image_size"),
        patch_size: usize_of(c, "patch_size"),
        num_layers: usize_of(c, "num_layers"),
        num_heads: usize_of(c, "num_heads"),
        hidden_dim: usize_of(c, "hidden_dim"),
        mlp_dim: usize_of(c, "mlp_dim"),
        num_classes: usize_of(c, "num_classes"),
        ..VitConfig::vit_b_16()
    };
    let (input, expected, state) = case("vit_tiny");
    let mut model = config.build::<f32>().unwrap();
    assert_eq!(model.num_parameters(), usize_of(&meta, "num_parameters"));
    model.load_state_dict(&state, true).expect("torchvision's keys and shapes");
    model.eval();
    let d = max_abs_diff(&model.forward(&Var::constant(input)).value(), &expected);
    assert!(d < 1e-4, "max |kiln - torch| = {d}");
}

/// The full-size model's keys and shapes, in order, against torchvision's.
fn check_keys(model: &dyn Module<f32>, name: &str) {
    let reference = json(&format!("{name}_keys.json"));
    let expected: Vec<(String, Vec<usize>)> = reference["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let shape = kv[1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            (kv[0].as_str().unwrap().to_string(), shape)
        })
        .collect();
    let mut ours = Vec::new();
    model.visit("", &mut |k, v, _| ours.push((k.to_string(), v.shape().to_vec())));
    // PyTorch keeps `num_batches_tracked` as a 0-d tensor; kiln's has one element
    let normalise = |v: Vec<(String, Vec<usize>)>| -> Vec<(String, Vec<usize>)> {
        v.into_iter().map(|(k, s)| if k.ends_with("num_batches_tracked") { (k, vec![]) } else { (k, s) }).collect()
    };
    assert_eq!(normalise(ours), normalise(expected), "{name}");
    assert_eq!(model.num_parameters(), usize_of(&reference, "num_parameters"));
}

#[test]
fn full_size_resnets_have_torchvisions_keys() {
    check_keys(&ResNetConfig::resnet18().build::<f32>().unwrap(), "resnet18");
    check_keys(&ResNetConfig::resnet34().build::<f32>().unwrap(), "resnet34");
}

#[test]
fn vit_b_16_has_torchvisions_keys() {
    check_keys(&VitConfig::vit_b_16().build::<f32>().unwrap(), "vit_b_16");
}

#[test]
fn summary_sees_every_layer_of_a_resnet() {
    let mut model = ResNetConfig { width: 4, num_classes: 5, ..ResNetConfig::resnet18() }.build::<f32>().unwrap();
    model.eval(); // batch norm on one image needs running statistics
    let s = kiln_nn::summary(&model, &[1, 3, 32, 32]);
    assert!(s.unhooked.is_empty(), "{s}");
    let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"layer2.0.downsample.0"), "{names:?}");
    assert_eq!(s.total_params(), model.num_parameters());
    // a container's mult-adds are its layers'
    let layer1 = s.layers.iter().find(|l| l.name == "layer1").unwrap();
    assert_eq!(layer1.output_shape, vec![1, 4, 8, 8]);
}

#[test]
fn resnet_summaries_match_torchinfo() {
    for case in json("torchinfo.json")["cases"].as_array().unwrap() {
        let mut config = match case["model"].as_str().unwrap() {
            "resnet18" => ResNetConfig::resnet18(),
            "resnet34" => ResNetConfig::resnet34(),
            other => panic!("unknown model {other}"),
        };
        config.num_classes = usize_of(case, "num_classes");
        let mut model = config.build::<f32>().unwrap();
        model.eval();
        let shape: Vec<usize> =
            case["input_shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let s = kiln_nn::summary(&model, &shape);
        assert_eq!(s.total_params(), usize_of(case, "total_params"), "{}", case["model"]);
        assert_eq!(s.mult_adds, case["total_mult_adds"].as_u64().unwrap(), "{}: {s}", case["model"]);
        assert!(s.unhooked.is_empty());
    }
}
