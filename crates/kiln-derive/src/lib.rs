//! # kiln-derive
//!
//! `#[derive(Module)]` for kiln: writes `kiln_nn::Module`'s `visit`, `set_training` and
//! `is_training` from a struct's fields, so that `parameters`, `named_parameters` (with
//! PyTorch's `state_dict` keys), `train`/`eval`, freezing and `state_dict`/`load_state_dict`
//! come for free. Use it through `kiln_nn::Module` (the derive and the trait share the name, as
//! serde's do); see [`derive_module`] for the rules.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use proc_macro_crate::FoundCrate;
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, parse_quote, Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, PathArguments, Type,
    WherePredicate,
};

/// Derives `kiln_nn::Module` from a struct's fields, in declaration order.
///
/// | field | becomes | key |
/// | --- | --- | --- |
/// | `Var<E>` | a parameter | `{field}` |
/// | `#[module(buffer)] Var<E>` | a buffer (saved and loaded, not trained) | `{field}` |
/// | `Option<Var<E>>` | an optional parameter (or buffer with `#[module(buffer)]`) | `{field}` when present |
/// | `Vec<Var<E>>` | a list of parameters, like `nn.ParameterList` | `{field}.0`, `{field}.1`, ... |
/// | `training: bool` | the module's mode, set by `train()`/`eval()` | |
/// | any other type | a sub-module (`Linear<E>`, `Vec<M>`, `Option<M>`, `Box<dyn Layer<E>>`, ...) | `{field}.{its keys}` |
/// | `bool`, integers, floats, `char`, `String`, `PhantomData<_>` | nothing (hyper-parameters) | |
/// | `#[module(skip)]` on any field | nothing (configs, caches, RNGs) | |
///
/// So a `Vec<Linear>` field `layers` inside a field `encoder` gives `encoder.layers.1.weight`,
/// as PyTorch names a `ModuleList`'s parameters. Tuple-struct fields are named by position
/// (`0.weight`), like `nn.Sequential`'s. `#[module(rename = "name")]` changes a field's key
/// (to match a PyTorch checkpoint whose attribute is not a valid Rust name).
///
/// `set_training` sets a `training: bool` field and calls every sub-module's `set_training`;
/// `is_training` returns the `training` field, else whether every sub-module is training
/// (so `eval()` on a struct of a `Conv2d` and a `Dropout` reports `false`, whatever the field
/// order), else `true`. Layers without a mode of their own (`Linear`, `Conv2d`) always say
/// `true`: a struct made of such layers only keeps an exact flag with a `training: bool` field.
///
/// # Element type
///
/// The impl is `Module<E>` for the struct's element type parameter `E`, with `E: Float`
/// added to its bounds: the type parameter bounded by `Float`, else the one used as `Var<E>`'s
/// argument in a field, else the struct's only type parameter. A struct without type
/// parameters implements `Module<f32>`. `#[module(elem = "T")]` on the struct picks a type
/// parameter or a concrete type (`#[module(elem = "f64")]`). Sub-module fields whose types
/// mention a type parameter get a `FieldType: Module<E>` bound.
///
/// # Paths
///
/// The generated code names kiln-nn by the path the deriving crate has to it, read from its
/// `Cargo.toml`: `::kiln_nn` (or the name it renamed the dependency to) for a crate that
/// depends on `kiln-nn`, else `::kiln::nn` for one that depends on the `kiln` facade only.
/// `#[module(crate = "path::to::nn")]` names it explicitly (a re-export elsewhere).
///
/// # Example
///
/// ```
/// use kiln_autograd::Var;
/// use kiln_nn::{Forward, Linear, Module, ReLU};
/// use kiln_tensor::{Float, Tensor};
///
/// #[derive(Module)]
/// struct Encoder<E: Float = f32> {
///     layers: Vec<Linear<E>>,
///     #[module(buffer)]
///     scale: Var<E>,
///     act: ReLU,
///     depth: usize,          // a hyper-parameter: skipped
///     training: bool,        // set by train() / eval()
/// }
///
/// #[derive(Module)]
/// struct Model<E: Float = f32> {
///     encoder: Encoder<E>,
///     head: Option<Linear<E>>,
///     temperature: Var<E>,
/// }
///
/// let mut model: Model = Model {
///     encoder: Encoder {
///         layers: vec![Linear::new(4, 8), Linear::new(8, 8)],
///         scale: Var::constant(Tensor::ones(&[8])),
///         act: ReLU,
///         depth: 2,
///         training: true,
///     },
///     head: Some(Linear::new(8, 2)),
///     temperature: Var::param(Tensor::ones(&[1])),
/// };
/// let keys: Vec<String> = model.named_parameters().into_iter().map(|(k, _)| k).collect();
/// assert_eq!(
///     keys,
///     [
///         "encoder.layers.0.weight", "encoder.layers.0.bias",
///         "encoder.layers.1.weight", "encoder.layers.1.bias",
///         "head.weight", "head.bias", "temperature",
///     ]
/// );
/// assert!(model.state_dict().contains_key("encoder.scale")); // a buffer: saved, not trained
/// model.eval();
/// assert!(!model.encoder.training);
/// assert_eq!(model.num_parameters(), (4 * 8 + 8) + (8 * 8 + 8) + (8 * 2 + 2) + 1);
/// ```
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// What a field contributes.
enum Kind {
    /// `Var` (parameter or buffer).
    Var { buffer: bool },
    /// `Option<Var>`.
    OptionVar { buffer: bool },
    /// `Vec<Var>`.
    VecVar { buffer: bool },
    /// The `training: bool` flag.
    Training,
    /// A sub-module.
    Module,
}

struct Field {
    /// `self.<access>`: a name or a tuple index.
    access: TokenStream2,
    /// The state-dict key segment.
    key: String,
    ty: Type,
    kind: Kind,
}

/// The element type of the generated impl.
enum Elem {
    /// A type parameter of the struct (gets `E: Float`).
    Param(Ident),
    /// A concrete type (`f32`, `f64`).
    Concrete(Type),
}

impl ToTokens for Elem {
    fn to_tokens(&self, tokens: &mut TokenStream2) {
        match self {
            Elem::Param(i) => i.to_tokens(tokens),
            Elem::Concrete(t) => t.to_tokens(tokens),
        }
    }
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let data = match &input.data {
        Data::Struct(s) => s,
        Data::Enum(e) => {
            return Err(syn::Error::new(e.enum_token.span(), "derive(Module) supports structs only, not enums"))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(u.union_token.span(), "derive(Module) supports structs only, not unions"))
        }
    };

    // Struct options.
    let mut elem_attr: Option<Type> = None;
    let mut krate: Option<syn::Path> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("module")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("elem") {
                let s: LitStr = meta.value()?.parse()?;
                elem_attr = Some(s.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let s: LitStr = meta.value()?.parse()?;
                krate = Some(s.parse()?);
                Ok(())
            } else {
                Err(meta
                    .error("unknown #[module(..)] option on a struct; expected `elem = \"..\"` or `crate = \"..\"`"))
            }
        })?;
    }

    let krate = krate.unwrap_or_else(|| {
        let find = |name: &str| proc_macro_crate::crate_name(name).ok();
        nn_path(find("kiln-nn"), find("kiln"))
    });
    let fields = collect_fields(&data.fields)?;
    let type_params: Vec<Ident> = input.generics.type_params().map(|p| p.ident.clone()).collect();
    let elem = pick_elem(&input, &fields, &type_params, elem_attr)?;

    // Bounds: `E: Float`, and `FieldType: Module<E>` for sub-modules whose type is generic.
    let mut generics = input.generics.clone();
    let where_clause = generics.make_where_clause();
    if let Elem::Param(e) = &elem {
        where_clause.predicates.push(parse_quote!(#e: #krate::__private::Float));
    }
    for f in fields.iter().filter(|f| matches!(f.kind, Kind::Module)) {
        if mentions_any(f.ty.to_token_stream(), &type_params) {
            let ty = &f.ty;
            let pred: WherePredicate = parse_quote!(#ty: #krate::Module<#elem>);
            where_clause.predicates.push(pred);
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();

    let mut visits = Vec::new();
    let mut set_training = Vec::new();
    let mut training_field = None;
    let mut modules = Vec::new();
    for f in &fields {
        let (access, key) = (&f.access, &f.key);
        let kind_of = |buffer: bool| {
            if buffer {
                quote!(#krate::TensorKind::Buffer)
            } else {
                quote!(#krate::TensorKind::Parameter)
            }
        };
        match f.kind {
            Kind::Var { buffer } => {
                let k = kind_of(buffer);
                visits.push(quote! {
                    __f(&::std::format!("{}{}", __prefix, #key), &self.#access, #k);
                });
            }
            Kind::OptionVar { buffer } => {
                let k = kind_of(buffer);
                visits.push(quote! {
                    if let ::std::option::Option::Some(__v) = &self.#access {
                        __f(&::std::format!("{}{}", __prefix, #key), __v, #k);
                    }
                });
            }
            Kind::VecVar { buffer } => {
                let k = kind_of(buffer);
                visits.push(quote! {
                    for (__i, __v) in self.#access.iter().enumerate() {
                        __f(&::std::format!("{}{}.{}", __prefix, #key, __i), __v, #k);
                    }
                });
            }
            Kind::Training => {
                training_field.get_or_insert_with(|| access.clone());
                set_training.push(quote!(self.#access = __training;));
            }
            Kind::Module => {
                modules.push(access.clone());
                visits.push(quote! {
                    #krate::Module::<#elem>::visit(&self.#access, &::std::format!("{}{}.", __prefix, #key), __f);
                });
                set_training.push(quote! {
                    #krate::Module::<#elem>::set_training(&mut self.#access, __training);
                });
            }
        }
    }
    // Without a flag of its own, a module is training unless one of its sub-modules is in
    // evaluation mode: asking only the first one would report `true` after `eval()` when the
    // first is a layer without a mode (a `Conv2d`, which always says `true`).
    let is_training = match training_field {
        Some(t) => quote!(self.#t),
        None if modules.is_empty() => quote!(true),
        None => {
            let modes = modules.iter().map(|m| quote!(#krate::Module::<#elem>::is_training(&self.#m)));
            quote!(#(#modes)&&*)
        }
    };

    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Module<#elem> for #name #ty_generics #where_clause {
            #[allow(unused_variables)]
            fn visit(
                &self,
                __prefix: &str,
                __f: &mut dyn ::std::ops::FnMut(&str, &#krate::__private::Var<#elem>, #krate::TensorKind),
            ) {
                #(#visits)*
            }
            #[allow(unused_variables)]
            fn set_training(&mut self, __training: bool) {
                #(#set_training)*
            }
            fn is_training(&self) -> bool {
                #is_training
            }
        }
    })
}

/// The path of kiln-nn in the deriving crate, from how its `Cargo.toml` names `kiln-nn` and
/// the `kiln` facade (`None`: not a dependency).
///
/// kiln-nn itself (`Itself`) is `::kiln_nn` through its `extern crate self as kiln_nn`, which
/// also serves its doc tests and examples; the facade re-exports kiln-nn as `kiln::nn`.
/// Without either (a manifest that cannot be read), `::kiln_nn`.
fn nn_path(nn: Option<FoundCrate>, facade: Option<FoundCrate>) -> syn::Path {
    let ident = |name: &str| Ident::new(name, Span::call_site());
    match (nn, facade) {
        (Some(FoundCrate::Name(n)), _) => {
            let n = ident(&n);
            parse_quote!(::#n)
        }
        (Some(FoundCrate::Itself), _) | (None, None) => parse_quote!(::kiln_nn),
        (None, Some(FoundCrate::Itself)) => parse_quote!(::kiln::nn),
        (None, Some(FoundCrate::Name(k))) => {
            let k = ident(&k);
            parse_quote!(::#k::nn)
        }
    }
}

fn collect_fields(fields: &Fields) -> syn::Result<Vec<Field>> {
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let (mut skip, mut buffer, mut rename) = (false, false, None::<String>);
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("module")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("skip") {
                    skip = true;
                    Ok(())
                } else if meta.path.is_ident("buffer") {
                    buffer = true;
                    Ok(())
                } else if meta.path.is_ident("rename") {
                    let s: LitStr = meta.value()?.parse()?;
                    if s.value().is_empty() || s.value().contains('.') {
                        return Err(syn::Error::new(s.span(), "#[module(rename)] needs a non-empty key without `.`"));
                    }
                    rename = Some(s.value());
                    Ok(())
                } else {
                    Err(meta.error(
                        "unknown #[module(..)] option on a field; expected `skip`, `buffer` or `rename = \"..\"`",
                    ))
                }
            })?;
        }
        if skip {
            if buffer || rename.is_some() {
                return Err(syn::Error::new(
                    field.span(),
                    "#[module(skip)] cannot be combined with `buffer` or `rename`",
                ));
            }
            continue;
        }
        let (access, ident_name) = match &field.ident {
            Some(id) => (id.to_token_stream(), id.unraw().to_string()),
            None => {
                let idx = syn::Index::from(i);
                (idx.to_token_stream(), i.to_string())
            }
        };
        let ty = &field.ty;
        let kind = if is_var(ty) {
            Kind::Var { buffer }
        } else if generic_arg(ty, "Option").is_some_and(is_var) {
            Kind::OptionVar { buffer }
        } else if generic_arg(ty, "Vec").is_some_and(is_var) {
            Kind::VecVar { buffer }
        } else if buffer {
            return Err(syn::Error::new(
                field.ty.span(),
                "#[module(buffer)] applies to `Var`, `Option<Var>` and `Vec<Var>` fields",
            ));
        } else if ident_name == "training" && is_ident(ty, "bool") {
            if rename.is_some() {
                return Err(syn::Error::new(field.span(), "the `training` flag has no key to rename"));
            }
            Kind::Training
        } else if is_plain_data(ty) {
            continue;
        } else {
            Kind::Module
        };
        out.push(Field { access, key: rename.unwrap_or(ident_name), ty: ty.clone(), kind });
    }
    Ok(out)
}

/// Chooses the element type (see the derive's doc, "Element type").
fn pick_elem(input: &DeriveInput, fields: &[Field], params: &[Ident], attr: Option<Type>) -> syn::Result<Elem> {
    if let Some(ty) = attr {
        if let Some(id) = single_ident(&ty) {
            if let Some(p) = params.iter().find(|p| *p == id) {
                return Ok(Elem::Param(p.clone()));
            }
        }
        return Ok(Elem::Concrete(ty));
    }
    if params.is_empty() {
        return Ok(Elem::Concrete(parse_quote!(f32)));
    }
    // 1. A type parameter bounded by `Float`.
    for p in input.generics.type_params() {
        let float_bound = p.bounds.iter().any(|b| match b {
            syn::TypeParamBound::Trait(t) => t.path.segments.last().is_some_and(|s| s.ident == "Float"),
            _ => false,
        });
        if float_bound {
            return Ok(Elem::Param(p.ident.clone()));
        }
    }
    if let Some(wc) = &input.generics.where_clause {
        for pred in &wc.predicates {
            if let WherePredicate::Type(pt) = pred {
                let float_bound = pt.bounds.iter().any(|b| match b {
                    syn::TypeParamBound::Trait(t) => t.path.segments.last().is_some_and(|s| s.ident == "Float"),
                    _ => false,
                });
                if let (true, Some(id)) = (float_bound, single_ident(&pt.bounded_ty)) {
                    if let Some(p) = params.iter().find(|p| *p == id) {
                        return Ok(Elem::Param(p.clone()));
                    }
                }
            }
        }
    }
    // 2. A type parameter used as `Var<E>`'s argument.
    for f in fields {
        let var_ty = match f.kind {
            Kind::Var { .. } => Some(&f.ty),
            Kind::OptionVar { .. } => generic_arg(&f.ty, "Option"),
            Kind::VecVar { .. } => generic_arg(&f.ty, "Vec"),
            _ => None,
        };
        if let Some(id) = var_ty.and_then(|t| generic_arg(t, "Var")).and_then(single_ident) {
            if let Some(p) = params.iter().find(|p| *p == id) {
                return Ok(Elem::Param(p.clone()));
            }
        }
    }
    // 3. The only type parameter, unless it is a field's whole type (then it is a sub-module).
    if params.len() == 1 && !fields.iter().any(|f| single_ident(&f.ty).is_some_and(|id| *id == params[0])) {
        return Ok(Elem::Param(params[0].clone()));
    }
    Err(syn::Error::new(
        input.generics.span(),
        "derive(Module): cannot tell which type parameter is the element type; bound it by `Float` \
         or add #[module(elem = \"E\")] (a type parameter) or #[module(elem = \"f32\")] to the struct",
    ))
}

/// The last path segment of a plain path type (`kiln_autograd::Var<E>` gives `Var<E>`).
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn is_var(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "Var")
}

/// `T` in `Name<T>` (the first type argument).
fn generic_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let seg = last_segment(ty).filter(|s| s.ident == name)?;
    match &seg.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// The identifier of a one-segment path type without arguments (`E`, `f32`).
fn single_ident(ty: &Type) -> Option<&Ident> {
    match ty {
        Type::Path(p) if p.qself.is_none() && p.path.leading_colon.is_none() && p.path.segments.len() == 1 => {
            let s = &p.path.segments[0];
            s.arguments.is_none().then_some(&s.ident)
        }
        Type::Group(g) => single_ident(&g.elem),
        _ => None,
    }
}

fn is_ident(ty: &Type, name: &str) -> bool {
    single_ident(ty).is_some_and(|i| i == name)
}

/// Hyper-parameter types that are never modules.
fn is_plain_data(ty: &Type) -> bool {
    const PLAIN: &[&str] = &[
        "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
        "f64", "String",
    ];
    if let Some(id) = single_ident(ty) {
        return PLAIN.iter().any(|p| id == p);
    }
    last_segment(ty).is_some_and(|s| s.ident == "PhantomData")
}

/// Whether a token stream names any of `params`.
fn mentions_any(tokens: TokenStream2, params: &[Ident]) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => params.contains(&i),
        TokenTree::Group(g) => mentions_any(g.stream(), params),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: DeriveInput) -> String {
        expand(input).map(|t| t.to_string()).unwrap_err().to_string()
    }

    fn ok(input: DeriveInput) -> String {
        expand(input).unwrap().to_string()
    }

    #[test]
    fn misuse_is_reported_clearly() {
        assert_eq!(
            err(parse_quote!(
                enum A {
                    X,
                }
            )),
            "derive(Module) supports structs only, not enums"
        );
        assert_eq!(
            err(parse_quote!(
                struct A {
                    #[module(buffer)]
                    l: Linear,
                }
            )),
            "#[module(buffer)] applies to `Var`, `Option<Var>` and `Vec<Var>` fields"
        );
        assert!(err(parse_quote!(
            struct A {
                #[module(bogus)]
                l: Linear,
            }
        ))
        .starts_with("unknown #[module(..)] option on a field"));
        assert!(err(parse_quote!(
            #[module(bogus = "x")]
            struct A;
        ))
        .starts_with("unknown #[module(..)] option on a struct"));
        assert!(err(parse_quote!(
            struct A {
                #[module(skip, buffer)]
                w: Var,
            }
        ))
        .contains("cannot be combined"));
        assert!(err(parse_quote!(
            struct A {
                #[module(rename = "a.b")]
                w: Var,
            }
        ))
        .contains("without `.`"));
        assert!(err(parse_quote!(
            struct W<M> {
                inner: M,
            }
        ))
        .starts_with("derive(Module): cannot tell which type parameter"));
        assert!(err(parse_quote!(
            struct W<A, B> {
                a: A,
                b: B,
            }
        ))
        .starts_with("derive(Module): cannot tell"));
    }

    #[test]
    fn element_type_and_bounds() {
        let concrete = ok(parse_quote!(
            struct A {
                w: Var,
            }
        ));
        assert!(concrete.contains(":: kiln_nn :: Module < f32 > for A"), "{concrete}");
        let f64_ = ok(parse_quote!(
            #[module(elem = "f64")]
            struct A {
                w: Var<f64>,
            }
        ));
        assert!(f64_.contains("Module < f64 > for A"), "{f64_}");
        let generic = ok(parse_quote!(
            struct M<E: Float = f32> {
                l: Linear<E>,
                act: ReLU,
            }
        ));
        assert!(generic.contains("impl < E : Float > :: kiln_nn :: Module < E > for M < E >"), "{generic}");
        assert!(generic.contains("E : :: kiln_nn :: __private :: Float"), "{generic}");
        assert!(generic.contains("Linear < E > : :: kiln_nn :: Module < E >"), "{generic}");
        assert!(!generic.contains("ReLU :"), "no bound for a field type without type parameters: {generic}");
        let picked = ok(parse_quote!(
            #[module(elem = "T")]
            struct R<T: Float, M> {
                inner: M,
            }
        ));
        assert!(picked.contains("M : :: kiln_nn :: Module < T >"), "{picked}");
        let by_var = ok(parse_quote!(
            struct P<T>
            where
                T: Scalar,
            {
                w: Var<T>,
            }
        ));
        assert!(by_var.contains("Module < T > for P < T >"), "{by_var}");
        let only = ok(parse_quote!(
            struct O<T> {
                l: Linear<T>,
            }
        ));
        assert!(only.contains("Module < T > for O < T >"), "{only}");
        let krate = ok(parse_quote!(
            #[module(crate = "kiln::nn")]
            struct A {
                w: Var,
            }
        ));
        assert!(krate.contains("kiln :: nn :: Module < f32 >") && !krate.contains("kiln_nn"), "{krate}");
    }

    #[test]
    fn the_path_of_kiln_nn_follows_the_dependencies() {
        let path = |nn, facade| nn_path(nn, facade).to_token_stream().to_string();
        let name = |n: &str| Some(FoundCrate::Name(n.to_string()));
        assert_eq!(path(name("kiln_nn"), None), ":: kiln_nn");
        assert_eq!(path(name("nn"), name("kiln")), ":: nn", "a renamed kiln-nn dependency");
        assert_eq!(path(Some(FoundCrate::Itself), None), ":: kiln_nn", "inside kiln-nn");
        assert_eq!(path(None, name("kiln")), ":: kiln :: nn", "a user of the facade only");
        assert_eq!(path(None, name("dl")), ":: dl :: nn", "the facade renamed");
        assert_eq!(path(None, Some(FoundCrate::Itself)), ":: kiln :: nn", "the facade's examples");
        assert_eq!(path(None, None), ":: kiln_nn");
    }

    #[test]
    fn is_training_asks_every_sub_module_without_a_flag() {
        let out = ok(parse_quote!(
            struct A {
                conv: Conv2d,
                drop: Dropout,
            }
        ));
        assert!(
            out.contains(
                "is_training (& self . conv) && :: kiln_nn :: Module :: < f32 > :: is_training (& self . drop)"
            ),
            "{out}"
        );
        let flagged = ok(parse_quote!(
            struct B {
                conv: Conv2d,
                training: bool,
            }
        ));
        assert!(flagged.contains("fn is_training (& self) -> bool { self . training }"), "{flagged}");
    }

    #[test]
    fn keys_and_kinds() {
        let out = ok(parse_quote!(
            struct A {
                r#type: Var,
                #[module(rename = "in_proj_weight")]
                w: Var,
                #[module(buffer)]
                running_mean: Option<Var>,
                ps: Vec<Var>,
                hidden: usize,
                #[module(skip)]
                cache: Linear,
                training: bool,
            }
        ));
        assert!(out.contains("\"type\""), "{out}");
        assert!(out.contains("\"in_proj_weight\""), "{out}");
        assert!(out.contains("TensorKind :: Buffer"), "{out}");
        assert!(!out.contains("hidden") && !out.contains("cache"), "{out}");
        assert!(out.contains("self . training = __training"), "{out}");
        let tuple = ok(parse_quote!(
            struct T(Linear, Var);
        ));
        assert!(tuple.contains("self . 0") && tuple.contains("\"1\""), "{tuple}");
    }
}
