//! The one place that generates host bindings for the `shoal:plugin` WIT package, from the
//! repository's root `wit/` (world `rule-plugin`). Everything else in the crate imports them
//! from here and converts at the edge into the host-side types of [`crate::message`].
//!
//! `Borrowing` ownership makes the exported `on-message` take a `Message<'_>` of `&str`/`&[u8]`,
//! so a call lowers the host's message straight into guest memory without cloning it first.
//! Results (`list<action>`) and host-import arguments stay owned.

// The generated glue builds typed function handles with `TypedFunc::new_unchecked` after it
// has type-checked the exports once (`RulePluginIndices::new`); that `unsafe` is wasmtime's.
#![allow(unsafe_code, clippy::all)]

wasmtime::component::bindgen!({
    world: "rule-plugin",
    path: "../../wit",
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use shoal::plugin::types as wit;
