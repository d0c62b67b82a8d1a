//! The end of an upload: what verified is stored, nothing asked for is missing, and the
//! application layer commits the version ([`crate::app::UploadRecord::commit`]).

use hotate_proto::pb::{self, upload_reply};
use tonic::Status;

use crate::app::{Finish, blocking};
use crate::error::ServerError;
use crate::live::Counters;

use super::Upload;

impl Upload {
    pub(super) async fn finish(&mut self, finish: pb::Finish) -> Result<(), Status> {
        self.drain().await?;
        if !self.pending.is_empty() {
            return Err(ServerError::Incomplete(format!(
                "{} needed chunks were not sent",
                self.pending.len()
            ))
            .into());
        }
        crate::text::check_comment(&finish.comment)?;
        let client_root = hotate_proto::parse_hash(&finish.root)
            .map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let record = self.record.clone();
        let parent = self.parent.clone();
        let finish = Finish {
            block_count: finish.block_count,
            root: client_root,
            comment: finish.comment,
            creator: self.session.user.clone(),
        };
        let version = blocking(move || record.commit(&parent, finish)).await?;
        Counters::add(&self.live.counters.versions_committed, 1);
        self.send(upload_reply::Kind::Committed(pb::Committed {
            version: version.id,
        }))
        .await
    }
}
