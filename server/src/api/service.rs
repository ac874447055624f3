//! The gRPC service: translates requests and errors, and calls into the core.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kinesis_butler_proto as pb;
use tonic::{Request, Response, Status};

use crate::coordination::butler::Butler;

/// `kinesis_butler.v1.Butler` over a [`Butler`] core.
pub(crate) struct ButlerService {
    core: Arc<Butler>,
}

impl ButlerService {
    /// Serves `core`.
    pub(crate) fn new(core: Arc<Butler>) -> Self {
        Self { core }
    }

    /// The tonic server for this service.
    pub(crate) fn into_server(self) -> pb::butler_server::ButlerServer<Self> {
        pb::butler_server::ButlerServer::new(self)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GetRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::butler_server::Butler for ButlerService {
    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::InitializeResponse>, Status> {
        let req = request.into_inner();
        let streams = self.core.initialize(&req.app, &req.streams).await?;
        Ok(Response::new(pb::InitializeResponse { streams }))
    }

    type GetRecordsStream = EventStream;

    async fn get_records(
        &self,
        request: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<Self::GetRecordsStream>, Status> {
        let events = self.core.open_session(request.into_inner()).await?;
        Ok(Response::new(Box::pin(events)))
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        self.core.checkpoint(request.into_inner()).await?;
        Ok(Response::new(pb::CheckpointResponse {}))
    }

    async fn describe_leases(
        &self,
        request: Request<pb::DescribeLeasesRequest>,
    ) -> Result<Response<pb::DescribeLeasesResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.core.describe(&req.app, &req.stream).await?))
    }

    async fn reset_leases(
        &self,
        request: Request<pb::ResetLeasesRequest>,
    ) -> Result<Response<pb::ResetLeasesResponse>, Status> {
        Ok(Response::new(self.core.reset_leases(request.into_inner()).await?))
    }
}
