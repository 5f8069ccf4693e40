//! Airflow itself: the base image recipe, DAG checks, and the API client for smoke runs.

pub mod api;
pub mod container;
pub mod recipe;
pub mod runner;
