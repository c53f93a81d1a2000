//! Windows security descriptors (owner, group, DACL) over SMB. `smb2` has no
//! call for them, so both directions send the compound themselves: CREATE +
//! QUERY_INFO or SET_INFO (InfoType SECURITY) + CLOSE, one round trip. The
//! descriptor travels as raw self-relative bytes, exactly as the server
//! gave it; nothing here parses it.

use smb2::client::connection::{CompoundOp, Frame};
use smb2::msg::close::CloseRequest;
use smb2::msg::create::{CreateDisposition, CreateRequest, ImpersonationLevel, ShareAccess};
use smb2::msg::query_info::{InfoType, QueryInfoRequest, QueryInfoResponse};
use smb2::msg::set_info::SetInfoRequest;
use smb2::pack::{Pack, ReadCursor, Unpack};
use smb2::types::flags::FileAccessMask;
use smb2::types::status::NtStatus;
use smb2::types::{Command, CreditCharge, FileId, OplockLevel};
use smb2::{SmbClient, Tree};

/// SECURITY_INFORMATION bits (MS-DTYP 2.4.7).
pub const OWNER: u32 = 0x1;
pub const GROUP: u32 = 0x2;
pub const DACL: u32 = 0x4;

/// Acts on a link itself, never on what it points to.
const FILE_OPEN_REPARSE_POINT: u32 = 0x0020_0000;

/// CREATE (open existing, `access`) + `command` on its handle + CLOSE; the
/// middle response.
async fn on_open(
    client: &SmbClient,
    tree: &Tree,
    path: &str,
    access: u32,
    command: Command,
    body: &dyn Pack,
) -> Result<Frame, smb2::Error> {
    let create = CreateRequest {
        requested_oplock_level: OplockLevel::None,
        impersonation_level: ImpersonationLevel::Impersonation,
        desired_access: FileAccessMask::new(access | FileAccessMask::SYNCHRONIZE),
        file_attributes: 0,
        share_access: ShareAccess(
            ShareAccess::FILE_SHARE_READ
                | ShareAccess::FILE_SHARE_WRITE
                | ShareAccess::FILE_SHARE_DELETE,
        ),
        create_disposition: CreateDisposition::FileOpen,
        create_options: FILE_OPEN_REPARSE_POINT,
        name: smb2::encode_path(path),
        create_contexts: vec![],
    };
    let close = CloseRequest {
        flags: 0,
        file_id: FileId::SENTINEL,
    };
    let op = |command, body| CompoundOp {
        command,
        body,
        tree_id: Some(tree.tree_id),
        credit_charge: CreditCharge(1),
    };
    let ops = [
        op(Command::Create, &create as &dyn Pack),
        op(command, body),
        op(Command::Close, &close),
    ];
    let mut frames = client
        .connection()
        .execute_compound(&ops)
        .await?
        .into_iter();
    let (Some(c), Some(m)) = (frames.next(), frames.next()) else {
        return Err(smb2::Error::invalid_data("short compound response"));
    };
    let (c, m) = (c?, m?);
    for (f, cmd) in [(&c, Command::Create), (&m, command)] {
        if f.header.status != NtStatus::SUCCESS {
            return Err(smb2::Error::Protocol {
                status: f.header.status,
                command: cmd,
            });
        }
    }
    Ok(m)
}

/// The raw descriptor (owner, group, DACL) of a share-relative path. SACLs
/// need SeSecurityPrivilege and are not asked for.
pub async fn query(client: &SmbClient, tree: &Tree, path: &str) -> Result<Vec<u8>, smb2::Error> {
    let query = QueryInfoRequest {
        info_type: InfoType::Security,
        file_info_class: 0,
        output_buffer_length: 64 * 1024,
        additional_information: OWNER | GROUP | DACL,
        flags: 0,
        file_id: FileId::SENTINEL,
        input_buffer: vec![],
    };
    let q = on_open(
        client,
        tree,
        path,
        FileAccessMask::READ_CONTROL,
        Command::QueryInfo,
        &query,
    )
    .await?;
    Ok(QueryInfoResponse::unpack(&mut ReadCursor::new(&q.body))?.output_buffer)
}

/// Writes the parts of `sd` named by `info` (OWNER, GROUP, DACL bits).
pub async fn set(
    client: &SmbClient,
    tree: &Tree,
    path: &str,
    sd: &[u8],
    info: u32,
) -> Result<(), smb2::Error> {
    let mut access = 0;
    if info & DACL != 0 {
        access |= FileAccessMask::WRITE_DAC;
    }
    if info & (OWNER | GROUP) != 0 {
        access |= FileAccessMask::WRITE_OWNER;
    }
    let req = SetInfoRequest {
        info_type: InfoType::Security,
        file_info_class: 0,
        additional_information: info,
        file_id: FileId::SENTINEL,
        buffer: sd.to_vec(),
    };
    on_open(client, tree, path, access, Command::SetInfo, &req).await?;
    Ok(())
}

/// How much of a descriptor a restore could write back.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// Owner, group and DACL.
    Full,
    /// The DACL only: the server refused the owner or group (setting another
    /// account as owner needs a privilege a plain user lacks on Windows, and
    /// Samba needs a Unix id for the SID). The refusal is kept for the warning.
    DaclOnly(String),
}

/// Writes owner, group and DACL; if the server refuses that, the DACL alone,
/// since who may access the file matters more than who owns it.
pub async fn restore(
    client: &SmbClient,
    tree: &Tree,
    path: &str,
    sd: &[u8],
) -> Result<Restored, smb2::Error> {
    with_fallback(|info| set(client, tree, path, sd, info)).await
}

/// The fallback on its own, so it can be tested without a server.
async fn with_fallback<F, Fut>(mut set: F) -> Result<Restored, smb2::Error>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), smb2::Error>>,
{
    match set(OWNER | GROUP | DACL).await {
        Ok(()) => Ok(Restored::Full),
        // Only a refusal from the server is worth a second try; a dead
        // connection would fail the same way again.
        Err(smb2::Error::Protocol { status, .. }) => {
            set(DACL).await?;
            Ok(Restored::DaclOnly(refusal(status)))
        }
        Err(e) => Err(e),
    }
}

/// Names the refusals smb2 does not know by name.
fn refusal(status: NtStatus) -> String {
    match status.0 {
        0xC000_005A => "STATUS_INVALID_OWNER".into(),
        0xC000_005B => "STATUS_INVALID_PRIMARY_GROUP".into(),
        0xC000_0061 => "STATUS_PRIVILEGE_NOT_HELD".into(),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: NtStatus) -> smb2::Error {
        smb2::Error::Protocol {
            status,
            command: Command::SetInfo,
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn owner_refused_falls_back_to_dacl() {
        const INVALID_OWNER: NtStatus = NtStatus(0xC000_005A);
        let mut asked = Vec::new();
        let r = run(with_fallback(|info| {
            asked.push(info);
            async move {
                if info & OWNER != 0 {
                    Err(refused(INVALID_OWNER))
                } else {
                    Ok(())
                }
            }
        }));
        assert_eq!(
            r.ok(),
            Some(Restored::DaclOnly("STATUS_INVALID_OWNER".into()))
        );
        assert_eq!(asked, [OWNER | GROUP | DACL, DACL]);
    }

    #[test]
    fn full_when_allowed_and_error_when_dacl_refused_too() {
        assert_eq!(
            run(with_fallback(|_| async { Ok(()) })).ok(),
            Some(Restored::Full)
        );
        let r = run(with_fallback(|_| async {
            Err(refused(NtStatus::ACCESS_DENIED))
        }));
        assert!(r.is_err());
    }
}
