//! Getting k8s/ into a cluster: the manifests, generated secrets, server-side apply and
//! waiting with diagnosis.

pub mod apply;
pub mod diagnose;
pub mod manifests;
pub mod secrets;
pub mod wait;
