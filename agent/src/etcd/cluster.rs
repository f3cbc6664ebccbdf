//! etcd's Cluster, Maintenance and Auth services: the core's members and status, the
//! state quota's alarm, and tokens. What Corral changes another way (members, access
//! rules) answers that it does, with the command to use.

use corral_net::rpc::CoreStatus;
use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, AuthDisableRequest, AuthDisableResponse,
    AuthEnableRequest, AuthEnableResponse, AuthStatusRequest, AuthStatusResponse,
    AuthenticateRequest, AuthenticateResponse, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberListResponse, MemberRemoveRequest,
    MemberRemoveResponse, MoveLeaderRequest, MoveLeaderResponse, StatusRequest, StatusResponse,
    alarm_request, auth_server::Auth, cluster_server::Cluster, maintenance_server::Maintenance,
};
use super::server::Etcd;
use super::{ETCD_API_VERSION, Services, errors};

impl Etcd {
    /// The status of the core, from its leader when known, else from any member.
    async fn core_status(&self) -> Result<CoreStatus, Status> {
        let core = &self.context.core;
        let mut candidates: Vec<String> = core.leader().into_iter().collect();
        candidates.extend(core.members().iter().cloned());
        let mut last = String::from("no core member is configured");
        for address in candidates {
            match core.status(&address).await {
                Ok(status) => return Ok(status),
                Err(error) => last = format!("{address}: {error}"),
            }
        }
        Err(errors::unavailable(&last))
    }
}

#[tonic::async_trait]
impl Cluster for Services {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(errors::unsupported(
            "core members are added with `corral core add` under the admin certificate",
        ))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(errors::unsupported(
            "core members are removed with `corral core remove` under the admin certificate",
        ))
    }

    /// The core's voting members (and learners). Their client URLs are empty: an etcd
    /// client talks to its host's agent, not to the core.
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.0.caller(&request)?;
        let status = self.0.core_status().await?;
        let member = |info: &corral_net::rpc::MemberInfo, learner: bool| Member {
            id: info.id,
            name: format!("core-{}", info.id),
            peer_ur_ls: vec![format!("https://{}", info.address)],
            client_ur_ls: vec![],
            is_learner: learner,
        };
        let members = status
            .voters
            .iter()
            .map(|m| member(m, false))
            .chain(status.learners.iter().map(|m| member(m, true)))
            .collect();
        Ok(Response::new(MemberListResponse {
            header: self.0.header(status.revision),
            members,
        }))
    }
}

/// The alarm etcd would raise for the state's quota.
fn quota_errors(status: &CoreStatus) -> Vec<String> {
    if status.quota.alarm() {
        vec![format!(
            "NOSPACE: the state holds {} keys of {} and {} bytes of {} (alarm past 90%)",
            status.quota.keys, status.quota.keys_max, status.quota.bytes, status.quota.bytes_max
        )]
    } else {
        Vec::new()
    }
}

#[tonic::async_trait]
impl Maintenance for Services {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        self.0.caller(&request)?;
        let action = alarm_request::AlarmAction::try_from(request.into_inner().action);
        if action != Ok(alarm_request::AlarmAction::Get) {
            return Err(errors::unsupported(
                "the quota alarm clears itself once the state is below 90% of its quota; \
                 `corral acl quota` raises the quota",
            ));
        }
        let status = self.0.core_status().await?;
        let alarms = if status.quota.alarm() {
            vec![AlarmMember {
                member_id: status.id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        };
        Ok(Response::new(AlarmResponse {
            header: self.0.header(status.revision),
            alarms,
        }))
    }

    /// The core's status as etcd's: the leader, the Raft term and index, the size of the
    /// state (keys and values, which every agent holds in memory) and the quota alarm.
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.0.caller(&request)?;
        let status = self.0.core_status().await?;
        let bytes = status.quota.bytes as i64;
        Ok(Response::new(StatusResponse {
            header: Some(super::pb::etcdserverpb::ResponseHeader {
                raft_term: status.term,
                ..self.0.header(status.revision).unwrap_or_default()
            }),
            version: ETCD_API_VERSION.to_string(),
            db_size: bytes,
            leader: status.leader.unwrap_or(0),
            raft_index: status.committed.map(|c| c.index).unwrap_or(0),
            raft_term: status.term,
            raft_applied_index: status.last_applied.unwrap_or(0),
            errors: quota_errors(&status),
            db_size_in_use: bytes,
            is_learner: false,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(errors::unsupported(
            "there is nothing to defragment: the state lives in memory and its snapshots are \
             written whole",
        ))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(errors::unsupported(
            "the core checks its members' states itself (corral status shows the last check)",
        ))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(errors::unsupported(
            "the core checks its members' states itself (corral status shows the last check)",
        ))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(errors::unsupported("moving the core's leader by hand"))
    }
}

#[tonic::async_trait]
impl Auth for Services {
    async fn auth_enable(
        &self,
        _: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(errors::unsupported(
            "access rules are turned on with `corral acl enforce on` under the admin certificate",
        ))
    }

    async fn auth_disable(
        &self,
        _: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Err(errors::unsupported(
            "access rules are turned off with `corral acl enforce off` under the admin certificate",
        ))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.0.caller(&request)?;
        Ok(Response::new(AuthStatusResponse {
            header: self.0.header_now(),
            enabled: self.0.rules_enforced(),
            auth_revision: 0,
        }))
    }

    /// A core token by name and secret: the secret is the etcd token the client then
    /// sends with every request.
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let request = request.into_inner();
        if !self.0.rules_enforced() {
            return Err(errors::auth_not_enabled());
        }
        if self.0.token_name(&request.password).as_deref() != Some(request.name.as_str()) {
            return Err(errors::auth_failed());
        }
        Ok(Response::new(AuthenticateResponse {
            header: self.0.header_now(),
            token: request.password,
        }))
    }
}
