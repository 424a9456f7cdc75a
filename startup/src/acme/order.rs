//! One ACME conversation (RFC 8555 §7): the account (from the cache, or registered and
//! cached), then an order for every name, each authorization answered by tls-alpn-01 on our
//! own listener, the request finalized with a fresh key, the chain downloaded.

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::cache::Cache;
use super::resolver::AcmeResolver;
use super::{AcmeError, Settings, certificate};

/// The ACME account, registered on first use.
pub(crate) struct Client {
    settings: Settings,
    cache: Cache,
    account: Option<Account>,
}

impl Client {
    pub(crate) fn new(settings: Settings, cache: Cache) -> Self {
        Self {
            settings,
            cache,
            account: None,
        }
    }

    /// Orders a certificate for every configured name; returns the key and chain (PEM), which
    /// the caller checks and caches.
    pub(crate) async fn order(&mut self, resolver: &AcmeResolver) -> Result<String, AcmeError> {
        let account = self.account().await?;
        let result = run_order(&account, &self.settings.domains, resolver).await;
        resolver.clear_challenges();
        if let Err(AcmeError::Acme(instant_acme::Error::Api(problem))) = &result
            && problem
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
        {
            // The CA forgot the account (a test CA restarted, or it was deactivated): the
            // next attempt registers a new one.
            self.account = None;
            self.cache.remove_account()?;
        }
        result
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let account = match self.cache.account()? {
            Some(json) => {
                let credentials = serde_json::from_str(&json)
                    .map_err(|e| AcmeError::Cache(format!("account file: {e}")))?;
                self.builder()?.from_credentials(credentials).await?
            }
            None => {
                let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| AcmeError::Cache(format!("account: {e}")))?;
                self.cache.store_account(&json)?;
                tracing::info!(account = account.id(), "ACME account registered");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.settings.directory_ca {
            Some(ca) => Account::builder_with_root(ca)?,
            None => Account::builder()?,
        })
    }
}

async fn run_order(
    account: &Account,
    domains: &[String],
    resolver: &AcmeResolver,
) -> Result<String, AcmeError> {
    let identifiers: Vec<Identifier> = domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Challenge(format!(
                    "authorization for {} is {other:?}",
                    authorization.identifier()
                )));
            }
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| AcmeError::Challenge("the CA offers no tls-alpn-01 challenge".into()))?;
        let domain = challenge.identifier().to_string();
        resolver.add_challenge(&domain, challenge.key_authorization().digest().as_ref())?;
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new().timeout(std::time::Duration::from_secs(90));
    match order.poll_ready(&retries).await? {
        OrderStatus::Ready => {}
        status => {
            let problems: Vec<String> = order.state().error.iter().map(|p| p.to_string()).collect();
            return Err(AcmeError::Challenge(format!(
                "order is {status:?}, not ready {problems:?}"
            )));
        }
    }
    let (key, request) = certificate::key_and_request(domains)?;
    order.finalize_csr(&request).await?;
    let chain = order.poll_certificate(&retries).await?;
    Ok(format!("{key}{chain}"))
}
