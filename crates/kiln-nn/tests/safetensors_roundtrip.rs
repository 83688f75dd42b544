//! kiln → safetensors → kiln is bit-identical for every layer type, in f32 and f64; files
//! convert between element types; metadata, raw state dicts, and agreement with the reference
//! `safetensors` crate in both directions.

use std::path::PathBuf;

use kiln_nn::serialize::{Dtype, KILN_VERSION};
use kiln_nn::{
    load, load_state_dict_file, save, save_state_dict, BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, ConvTranspose2dConfig,
    Embedding, GRUConfig, GroupNorm, LSTMConfig, LayerNorm, Linear, Metadata, Module, RNNConfig, ReLU, SafetensorsFile,
    Sequential, StateDict, TensorKind,
};
use kiln_tensor::{Float, Tensor};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-st-roundtrip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deterministic stream of awkward values: ordinary ones, and now and then a NaN, an
/// infinity, a negative zero or a subnormal, so that "bit-identical" is tested where it bites.
struct Values(u64);
impl Values {
    fn next<E: Float>(&mut self) -> E {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let u = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        match self.0 >> 60 {
            0 => E::nan(),
            1 => E::neg_zero(),
            2 => E::infinity(),
            3 => E::min_positive_value() / E::from_f64(8.0), // subnormal
            _ => E::from_f64(u * 4.0 - 2.0),
        }
    }
}

/// Gives every parameter and buffer fresh awkward values (whole counts for
/// `num_batches_tracked`), so that nothing is left at an init both models share.
fn scramble<E: Float>(m: &dyn Module<E>, seed: u64) {
    let mut v = Values(seed);
    m.visit("", &mut |key, var, kind| {
        let n = var.numel();
        let data: Vec<E> = if key.ends_with("num_batches_tracked") {
            assert_eq!(kind, TensorKind::Buffer);
            vec![E::from_f64(7.0 + seed as f64); n]
        } else {
            (0..n).map(|_| v.next()).collect()
        };
        var.set_value(Tensor::from_vec(data, var.shape().as_slice()));
    });
}

fn bits<E: Float>(t: &Tensor<E>) -> Vec<u64> {
    // f32 -> f64 is injective on bit patterns apart from signalling NaNs, which the value
    // stream does not produce (`E::nan()` is quiet).
    t.to_vec().iter().map(|&x| Float::to_f64(x).to_bits()).collect()
}

fn assert_bit_identical<E: Float>(what: &str, a: &StateDict<E>, b: &StateDict<E>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: keys");
    for (k, ta) in a {
        let tb = &b[k];
        assert_eq!(ta.shape(), tb.shape(), "{what}: {k} shape");
        assert_eq!(bits(ta), bits(tb), "{what}: {k} differs");
    }
}

/// Saves a scrambled `make()`, loads it into another `make()` (different init), and checks
/// every key bit for bit.
fn round_trip<E: Float, M: Module<E>>(name: &str, make: impl Fn() -> M) {
    let dir = temp_dir(&format!("{name}-{}", std::any::type_name::<E>()));
    let path = dir.join(format!("{name}.safetensors"));
    let a = make();
    scramble(&a, 1);
    let mut b = make();
    scramble(&b, 2);
    assert_ne!(
        bits(&a.state_dict().into_values().next().unwrap()),
        bits(&b.state_dict().into_values().next().unwrap())
    );

    save(&a, &path, &Metadata::new()).unwrap();
    let report = load(&mut b, &path, true).unwrap();
    assert_eq!(report.loaded.len(), a.state_dict().len(), "{name}");
    assert!(report.missing.is_empty() && report.unexpected.is_empty(), "{name}: {report:?}");
    assert_bit_identical(name, &a.state_dict(), &b.state_dict());

    // The raw state-dict path agrees, and the file declares kiln's dtypes.
    assert_bit_identical(name, &a.state_dict(), &load_state_dict_file::<E>(&path).unwrap());
    let file = SafetensorsFile::open(&path).unwrap();
    for (k, info) in file.tensors() {
        let want = if k.ends_with("num_batches_tracked") { Dtype::I64 } else { Dtype::of::<E>() };
        assert_eq!(info.dtype, want, "{name}: {k}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn every_layer<E: Float>() {
    round_trip::<E, _>("linear", || Linear::<E>::new_generic(5, 3));
    round_trip::<E, _>("conv1d", || Conv1d::<E>::new_generic(2, 4, 3));
    round_trip::<E, _>("conv2d", || Conv2d::<E>::new_generic(3, 4, 3));
    round_trip::<E, _>("conv_transpose2d", || {
        ConvTranspose2dConfig { groups: 2, ..ConvTranspose2dConfig::new(4, 6, 3) }.build::<E>().unwrap()
    });
    round_trip::<E, _>("batchnorm1d", || BatchNorm1d::<E>::new_generic(4));
    round_trip::<E, _>("batchnorm2d", || BatchNorm2d::<E>::new_generic(3));
    round_trip::<E, _>("layernorm", || LayerNorm::<E>::new_generic(&[2, 5]));
    round_trip::<E, _>("groupnorm", || GroupNorm::<E>::new_generic(2, 6));
    round_trip::<E, _>("embedding", || Embedding::<E>::new_generic(11, 4));
    round_trip::<E, _>("lstm", || {
        LSTMConfig { num_layers: 2, bidirectional: true, ..LSTMConfig::new(3, 4) }.build::<E>().unwrap()
    });
    round_trip::<E, _>("gru", || GRUConfig { num_layers: 2, ..GRUConfig::new(3, 5) }.build::<E>().unwrap());
    round_trip::<E, _>("rnn", || RNNConfig { bidirectional: true, ..RNNConfig::new(2, 3) }.build::<E>().unwrap());
    round_trip::<E, _>("sequential", || {
        Sequential::<E>::new_generic()
            .add(Conv2d::new_generic(1, 2, 3))
            .add(BatchNorm2d::new_generic(2))
            .add(ReLU)
            .add(Linear::new_generic(4, 2))
    });
}

#[test]
fn every_layer_round_trips_bit_identically_f32() {
    every_layer::<f32>();
}

#[test]
fn every_layer_round_trips_bit_identically_f64() {
    every_layer::<f64>();
}

#[test]
fn batchnorm_keys_follow_pytorch() {
    let bn: BatchNorm2d = BatchNorm2d::new(3);
    let keys: Vec<String> = bn.state_dict().into_keys().collect();
    assert_eq!(keys, ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"]);
}

#[test]
fn element_types_convert_on_load() {
    let dir = temp_dir("convert");
    let path = dir.join("m.safetensors");
    // f32 file into an f64 model: exact.
    let a: Linear<f32> = Linear::new(4, 3);
    save(&a, &path, &Metadata::new()).unwrap();
    let mut b: Linear<f64> = Linear::new_generic(4, 3);
    load(&mut b, &path, true).unwrap();
    let want: Vec<f64> = a.weight.value().to_vec().iter().map(|&x| f64::from(x)).collect();
    assert_eq!(b.weight.value().to_vec(), want);

    // f64 file into an f32 model: rounded to nearest.
    let c: Linear<f64> = Linear::new_generic(4, 3);
    save(&c, &path, &Metadata::new()).unwrap();
    let mut d: Linear<f32> = Linear::new(4, 3);
    load(&mut d, &path, true).unwrap();
    let want: Vec<f32> = c.bias.as_ref().unwrap().value().to_vec().iter().map(|&x| x as f32).collect();
    assert_eq!(d.bias.as_ref().unwrap().value().to_vec(), want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metadata_is_kept_with_the_kiln_version() {
    let dir = temp_dir("meta");
    let path = dir.join("m.safetensors");
    let m: Linear = Linear::new(2, 2);
    let mut meta = Metadata::new();
    meta.insert("epoch".into(), "12".into());
    meta.insert("kiln_version".into(), "forged".into());
    meta.insert("note".into(), "quotes \" and \\ and ünïcödé".into());
    save(&m, &path, &meta).unwrap();
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.metadata()["epoch"], "12");
    assert_eq!(f.metadata()["kiln_version"], KILN_VERSION);
    assert_eq!(f.metadata()["format"], "pt");
    assert_eq!(f.metadata()["note"], "quotes \" and \\ and ünïcödé");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn raw_state_dicts_round_trip_including_odd_shapes() {
    let dir = temp_dir("raw");
    let path = dir.join("sd.safetensors");
    let mut sd: StateDict<f64> = StateDict::new();
    sd.insert("scalar".into(), Tensor::scalar(3.5));
    sd.insert("empty".into(), Tensor::zeros(&[0, 4]));
    sd.insert("also.empty".into(), Tensor::zeros(&[3, 0]));
    sd.insert("name with spaces and \"quotes\"".into(), Tensor::from_vec(vec![1.0, -2.0], &[2]));
    // A non-contiguous tensor is written row-major.
    sd.insert("t".into(), Tensor::from_vec((0..6).map(f64::from).collect(), &[2, 3]).transpose(0, 1));
    save_state_dict(&sd, &path, &Metadata::new()).unwrap();
    let back = load_state_dict_file::<f64>(&path).unwrap();
    assert_eq!(back.keys().collect::<Vec<_>>(), sd.keys().collect::<Vec<_>>());
    for (k, t) in &sd {
        assert_eq!(back[k].shape(), t.shape(), "{k}");
        assert_eq!(back[k].to_vec(), t.to_vec(), "{k}");
    }
    assert_eq!(back["t"].to_vec(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    // An empty state dict is a valid file too.
    save_state_dict(&StateDict::<f32>::new(), &path, &Metadata::new()).unwrap();
    assert!(load_state_dict_file::<f32>(&path).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saving_over_an_open_file_leaves_the_open_one_readable() {
    let dir = temp_dir("overwrite");
    let path = dir.join("m.safetensors");
    let a: Linear = Linear::new(3, 3);
    save(&a, &path, &Metadata::new()).unwrap();
    let open = SafetensorsFile::open(&path).unwrap();
    let b: Linear = Linear::new(3, 3);
    save(&b, &path, &Metadata::new()).unwrap();
    // The mapping still sees the old file (rename replaced the name, not the bytes).
    assert_eq!(open.tensor::<f32>("weight").unwrap().to_vec(), a.weight.value().to_vec());
    assert_eq!(load_state_dict_file::<f32>(&path).unwrap()["weight"].to_vec(), b.weight.value().to_vec());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["m.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The reference crate reads what kiln writes, with the same bytes.
#[test]
fn reference_reader_agrees_with_kiln_files() {
    let dir = temp_dir("ref-read");
    let path = dir.join("m.safetensors");
    let model = Sequential::<f32>::new().add(Conv2d::new(1, 2, 3)).add(BatchNorm2d::new(2)).add(Linear::new(4, 3));
    scramble(&model, 5);
    save(&model, &path, &Metadata::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["kiln_version"], KILN_VERSION);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let sd = model.state_dict();
    assert_eq!(st.len(), sd.len());
    for (k, t) in &sd {
        let view = st.tensor(k).unwrap();
        assert_eq!(view.shape(), t.shape(), "{k}");
        if k.ends_with("num_batches_tracked") {
            assert_eq!(view.dtype(), safetensors::Dtype::I64);
            assert_eq!(view.data(), 12i64.to_le_bytes());
        } else {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let want: Vec<u8> = t.to_vec().iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(view.data(), want.as_slice(), "{k}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// kiln reads what the reference crate writes (mixed dtypes, including F16 and BF16).
#[test]
fn kiln_reads_reference_files() {
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = [1.5f32, -2.25, 3.0, f32::INFINITY].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f64s: Vec<u8> = [0.1f64, -0.2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f16s: Vec<u8> = [0x3c00u16, 0xc500].iter().flat_map(|x| x.to_le_bytes()).collect(); // 1.0, -5.0
    let bf16s: Vec<u8> = [0x3f80u16, 0x4049].iter().flat_map(|x| x.to_le_bytes()).collect(); // 1.0, 3.140625
    let i64s: Vec<u8> = [4i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("a", TensorView::new(safetensors::Dtype::F32, vec![2, 2], &f32s).unwrap()),
        ("b", TensorView::new(safetensors::Dtype::F64, vec![2], &f64s).unwrap()),
        ("c", TensorView::new(safetensors::Dtype::F16, vec![2], &f16s).unwrap()),
        ("d", TensorView::new(safetensors::Dtype::BF16, vec![1, 2], &bf16s).unwrap()),
        ("labels", TensorView::new(safetensors::Dtype::I64, vec![2], &i64s).unwrap()),
    ];
    let meta = std::collections::HashMap::from([("source".to_string(), "reference".to_string())]);
    let bytes = safetensors::serialize(views, &Some(meta)).unwrap();
    let f = SafetensorsFile::from_bytes(bytes).unwrap();
    assert_eq!(f.metadata()["source"], "reference");
    assert_eq!(f.tensor::<f32>("a").unwrap().to_vec(), [1.5, -2.25, 3.0, f32::INFINITY]);
    assert_eq!(f.tensor::<f64>("b").unwrap().to_vec(), [0.1, -0.2]);
    assert_eq!(f.tensor::<f32>("b").unwrap().to_vec(), [0.1f32, -0.2]);
    assert_eq!(f.tensor::<f64>("c").unwrap().to_vec(), [1.0, -5.0]);
    assert_eq!(f.tensor::<f32>("d").unwrap().to_vec(), [1.0, 3.140625]);
    assert_eq!(f.tensor::<f32>("d").unwrap().shape(), [1, 2]);
    assert_eq!(f.tensor_i64("labels").unwrap(), (vec![4, -1], vec![2]));
    assert_eq!(f.raw_bytes("labels").unwrap(), i64s.as_slice());
}
