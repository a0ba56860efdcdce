//! SEAL (docs/design.md, "SEAL"): self-edit generation, inner-loop updates with any finetuning method,
//! rewards, ReST-EM, diagnostics, and continual SEAL with a retention matrix.

pub mod continual;
pub mod diagnostics;
pub mod inner;
pub mod passages;
pub mod report;
pub mod rest_em;
pub mod run;
pub mod self_edit;
pub mod templates;
