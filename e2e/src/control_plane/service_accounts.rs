//! ServiceAccounts and their tokens: every TokenRequest of the harness and the tests goes through
//! [`ControlPlane::request_token`] (plain, or bound to a pod as the kubelet projects it).

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::{ControlPlane, Error, FIELD_MANAGER, Result};

impl ControlPlane {
    /// Creates the namespace and the ServiceAccount when missing (there is no controller-manager to make
    /// `default`). Idempotent.
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> Result<()> {
        let client = self.admin_client();
        let pp = PatchParams::apply(FIELD_MANAGER);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .patch(namespace, &pp, &Patch::Apply(&ns))
            .await?;
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client, namespace)
            .patch(name, &pp, &Patch::Apply(&sa))
            .await?;
        Ok(())
    }

    /// A one-hour token of an existing ServiceAccount, issued by the API server (TokenRequest).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        self.request_token(namespace, name, 3600, None).await
    }

    /// A one-hour token of `namespace/name` bound to `pod`, as the kubelet projects it into the pod: the API
    /// server adds the pod's node name to the user's extra info (what node-scoped admission rules read).
    pub async fn pod_bound_token(&self, namespace: &str, name: &str, pod: &Pod) -> Result<String> {
        self.request_token(namespace, name, 3600, Some(pod)).await
    }

    /// A TokenRequest for the ServiceAccount `namespace/name`, valid `seconds`, bound to `pod` when given.
    pub async fn request_token(
        &self,
        namespace: &str,
        name: &str,
        seconds: i64,
        pod: Option<&Pod>,
    ) -> Result<String> {
        let req = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(seconds),
                bound_object_ref: pod.map(|pod| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: pod.metadata.uid.clone(),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let resp = Api::<ServiceAccount>::namespaced(self.admin_client(), namespace)
            .create_token_request(name, &PostParams::default(), &req)
            .await?;
        resp.status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::NoToken {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// A client that authenticates with a raw bearer token (and trusts this control plane's CA). Must be called
    /// inside a tokio runtime.
    pub fn client_with_token(&self, token: String) -> Client {
        let mut config = self.admin_config();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        Client::try_from(config).expect("admin client config was validated at start")
    }
}
