//! The runner CA, kept in the database so every replica signs with the same one.

use super::{Error, Result, Store};

impl Store {
    /// The CA's certificate and key (PEM), creating them with `make` when there are none yet.
    /// Replicas starting together agree on one: creation happens under an advisory lock.
    pub async fn load_or_create_ca(
        &self,
        make: impl FnOnce() -> std::result::Result<(String, String), String>,
    ) -> Result<(String, String)> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backporcher.pki'))")
            .execute(&mut *tx)
            .await?;
        let row: Option<(String, String)> = sqlx::query_as("SELECT cert_pem, key_pem FROM pki_ca")
            .fetch_optional(&mut *tx)
            .await?;
        let pair = match row {
            Some(r) => r,
            None => {
                let (cert, key) = make().map_err(Error::Invalid)?;
                sqlx::query("INSERT INTO pki_ca (cert_pem, key_pem) VALUES ($1, $2)")
                    .bind(&cert)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!("created the runner CA");
                (cert, key)
            }
        };
        tx.commit().await?;
        Ok(pair)
    }
}
