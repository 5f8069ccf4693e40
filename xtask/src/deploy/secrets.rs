//! Secrets xtask generates at the first apply and keeps only in the cluster: never in
//! the repository, never printed.

/// A Secret xtask makes, and the keys it holds.
pub struct GeneratedSecret {
    pub name: &'static str,
    pub keys: &'static [&'static str],
}

pub const GENERATED: &[GeneratedSecret] = &[
    GeneratedSecret {
        name: "airflow-secrets",
        keys: &[
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
        ],
    },
    GeneratedSecret { name: "airflow-postgres", keys: &["password"] },
    GeneratedSecret { name: "airflow-admin", keys: &["passwords.json", "username", "password"] },
];
