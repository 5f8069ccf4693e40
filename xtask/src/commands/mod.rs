//! One module per user command. Each is a leaf: only `main` imports them; what two
//! commands share lives in a module below them (a tidy test checks this).

pub mod base;
pub mod bench;
pub mod ci;
pub mod dags;
pub mod doctor;
pub mod exec;
pub mod images;
pub mod k8s_down;
pub mod k8s_up;
pub mod logs;
pub mod manifests;
pub mod node_image;
pub mod run;
pub mod smoke;
pub mod status;
pub mod watch;
