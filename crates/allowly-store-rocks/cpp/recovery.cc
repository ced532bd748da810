// Recovery after a failed write (see `src/recovery.rs` for why and what it promises). Compiled by
// build.rs against the headers of the RocksDB that librocksdb-sys links.
//
// Two pieces:
//
// - `AllowlyRecoverableEnv`, an Env whose file system is the default one wrapped so that
//   (1) an IO error of a file being written is marked file-scoped, which is what makes RocksDB
//   treat a failed write-ahead-log write or sync as a *hard* error that `DB::Resume` can clear
//   (unmarked, EIO is "fatal": refused until the database is reopened), and (2) a write-ahead-log
//   file whose append or sync failed is cut back to its last synced length at once and takes no
//   more appends, so the failed record is gone before anything else happens — before `Resume`'s
//   flushes, one column family at a time, could leave a crash to replay it into some column
//   families and not others — and is never trusted again (PostgreSQL's "fsyncgate" rule: after
//   a failed fsync, do not retry on the same file as if the data were safe; `Resume` switches to
//   a new log).
// - `allowly_db_resume`, `DB::Resume()` for the Rust side, which has no binding for it.

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/io_status.h"
#include "rocksdb/utilities/object_registry.h"

// The C API's handle, as `db/c.cc` defines it (a struct holding the DB pointer and nothing
// else); the Rust crate hands its pointer over (`rocksdb::AsRawPtr`).
struct rocksdb_t {
  ROCKSDB_NAMESPACE::DB* rep;
};

namespace {

using ROCKSDB_NAMESPACE::DataVerificationInfo;
using ROCKSDB_NAMESPACE::Env;
using ROCKSDB_NAMESPACE::FileOptions;
using ROCKSDB_NAMESPACE::FileSystem;
using ROCKSDB_NAMESPACE::FileSystemWrapper;
using ROCKSDB_NAMESPACE::FSWritableFile;
using ROCKSDB_NAMESPACE::FSWritableFileOwnerWrapper;
using ROCKSDB_NAMESPACE::IODebugContext;
using ROCKSDB_NAMESPACE::IOOptions;
using ROCKSDB_NAMESPACE::IOStatus;
using ROCKSDB_NAMESPACE::ObjectLibrary;
using ROCKSDB_NAMESPACE::Slice;
using ROCKSDB_NAMESPACE::Status;

constexpr const char* kEnvName = "AllowlyRecoverableEnv";

// An IO error of a file being written concerns that file: RocksDB may retry with new files
// (a new log, new table files, a new MANIFEST), which is all `Resume` does. A fenced file
// system stays fatal.
IOStatus FileScoped(IOStatus s) {
  if (s.IsIOError() && !s.IsIOFenced()) {
    s.SetScope(IOStatus::IOErrorScope::kIOErrorScopeFile);
  }
  return s;
}

bool IsWal(const std::string& fname) {
  return fname.size() > 4 && fname.compare(fname.size() - 4, 4, ".log") == 0;
}

// A file being written. For a write-ahead log also: its length at the last sync that succeeded,
// and, once an append or sync failed, the cut back to it. RocksDB may sync a log from one thread
// while another appends (`IsSyncThreadSafe`), so the three figures are kept under a lock (the IO
// runs outside it, except the cut), and an append or a sync that overlapped a failure is failed
// too: nothing written or synced around a failure is ever reported durable.
class GuardedFile final : public FSWritableFileOwnerWrapper {
 public:
  GuardedFile(std::unique_ptr<FSWritableFile>&& f, bool wal, uint64_t size)
      : FSWritableFileOwnerWrapper(std::move(f)), wal_(wal), written_(size), synced_(size) {}

  IOStatus Append(const Slice& data, const IOOptions& o, IODebugContext* d) override {
    if (Dead()) return Refused();
    uint64_t end = Written() + data.size();
    return Appended(target()->Append(data, o, d), end, o, d);
  }
  IOStatus Append(const Slice& data, const IOOptions& o, const DataVerificationInfo& v,
                  IODebugContext* d) override {
    if (Dead()) return Refused();
    uint64_t end = Written() + data.size();
    return Appended(target()->Append(data, o, v, d), end, o, d);
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            IODebugContext* d) override {
    if (Dead()) return Refused();
    return Appended(target()->PositionedAppend(data, offset, o, d), offset + data.size(), o, d);
  }
  IOStatus PositionedAppend(const Slice& data, uint64_t offset, const IOOptions& o,
                            const DataVerificationInfo& v, IODebugContext* d) override {
    if (Dead()) return Refused();
    return Appended(target()->PositionedAppend(data, offset, o, v, d), offset + data.size(), o, d);
  }
  // After a failure, flushes and syncs of the dead log succeed doing nothing: it holds its
  // synced part alone (every append since was refused or cut), and `Resume` flushes and syncs
  // the old log before it switches to a new one (an error there would fail every recovery).
  IOStatus Flush(const IOOptions& o, IODebugContext* d) override {
    if (Dead()) return IOStatus::OK();
    return Checked(target()->Flush(o, d), o, d);
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* d) override {
    if (Dead()) return IOStatus::OK();
    uint64_t covered = Written();
    return Synced(target()->Sync(o, d), covered, o, d);
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* d) override {
    if (Dead()) return IOStatus::OK();
    uint64_t covered = Written();
    return Synced(target()->Fsync(o, d), covered, o, d);
  }
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& o,
                     IODebugContext* d) override {
    if (Dead()) return IOStatus::OK();
    return Checked(target()->RangeSync(offset, nbytes, o, d), o, d);
  }
  // After a failure nothing may grow the file back over the cut (the writer's close truncates
  // to the length it counted, which includes the failed bytes).
  IOStatus Truncate(uint64_t size, const IOOptions& o, IODebugContext* d) override {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (failed_ && size > synced_) size = synced_;
    }
    return FileScoped(target()->Truncate(size, o, d));
  }
  IOStatus Close(const IOOptions& o, IODebugContext* d) override {
    return FileScoped(target()->Close(o, d));
  }

 private:
  bool Dead() {
    std::lock_guard<std::mutex> g(mu_);
    return failed_;
  }
  uint64_t Written() {
    std::lock_guard<std::mutex> g(mu_);
    return written_;
  }
  static IOStatus Refused() {
    return FileScoped(IOStatus::IOError("a write to this log failed; it takes no more writes"));
  }
  IOStatus Appended(IOStatus s, uint64_t end, const IOOptions& o, IODebugContext* d) {
    if (s.ok()) {
      std::lock_guard<std::mutex> g(mu_);
      // A failure (a sync's) while this append ran: it may have landed after the cut.
      if (failed_) {
        target()->Truncate(synced_, o, d).PermitUncheckedError();
        return Refused();
      }
      if (end > written_) written_ = end;
      return s;
    }
    return Checked(std::move(s), o, d);
  }
  IOStatus Synced(IOStatus s, uint64_t covered, const IOOptions& o, IODebugContext* d) {
    if (s.ok()) {
      std::lock_guard<std::mutex> g(mu_);
      // A failure while this sync ran cut what it covered: not durable.
      if (failed_) return Refused();
      if (covered > synced_) synced_ = covered;
      return s;
    }
    return Checked(std::move(s), o, d);
  }
  // On a write-ahead log's first failure: cut it back to what the last sync made durable
  // (everything after it belongs to writes not acknowledged as durable: the failed write, maybe
  // unsynced writes before it, which the memtables still hold and `Resume` flushes), and try to
  // make the cut durable. Best effort: if the cut fails too, the file is still never written
  // again, and the recovery flush makes it obsolete.
  IOStatus Checked(IOStatus s, const IOOptions& o, IODebugContext* d) {
    if (!s.ok() && wal_) {
      std::lock_guard<std::mutex> g(mu_);
      if (!failed_) {
        failed_ = true;
        if (target()->Truncate(synced_, o, d).ok()) {
          target()->Fsync(o, d).PermitUncheckedError();
        }
      }
    }
    return FileScoped(std::move(s));
  }

  const bool wal_;
  std::mutex mu_;
  bool failed_ = false;
  uint64_t written_;
  uint64_t synced_;
};

class RecoverableFs final : public FileSystemWrapper {
 public:
  explicit RecoverableFs(const std::shared_ptr<FileSystem>& base) : FileSystemWrapper(base) {}
  static const char* kClassName() { return "AllowlyRecoverableFs"; }
  const char* Name() const override { return kClassName(); }

  IOStatus NewWritableFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<FSWritableFile>* r, IODebugContext* d) override {
    return Guard(f, target()->NewWritableFile(f, o, r, d), r, 0);
  }
  IOStatus ReopenWritableFile(const std::string& f, const FileOptions& o,
                              std::unique_ptr<FSWritableFile>* r, IODebugContext* d) override {
    IOStatus s = target()->ReopenWritableFile(f, o, r, d);
    uint64_t size = 0;
    if (s.ok()) s = target()->GetFileSize(f, o.io_options, &size, d);
    return Guard(f, s, r, size);
  }
  IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const FileOptions& o,
                             std::unique_ptr<FSWritableFile>* r, IODebugContext* d) override {
    return Guard(f, target()->ReuseWritableFile(f, old, o, r, d), r, 0);
  }
  // Not known here, so RocksDB leaves the way back from a full volume to `Resume` (the engine's
  // probe, once a synced write proves there is room) instead of its own recovery, which waits
  // for free space beyond its write buffers' reservation (never reached on a small volume:
  // writes still failed 50 s after the space came back) and refuses `Resume` meanwhile ("Recovery
  // in progress"). Free space is the engine's to watch (`--min-free-disk`).
  IOStatus GetFreeSpace(const std::string&, const IOOptions&, uint64_t*, IODebugContext*) override {
    return IOStatus::NotSupported("free space is watched by the engine");
  }

 private:
  static IOStatus Guard(const std::string& f, IOStatus s, std::unique_ptr<FSWritableFile>* r,
                        uint64_t size) {
    if (s.ok()) r->reset(new GuardedFile(std::move(*r), IsWal(f), size));
    return FileScoped(std::move(s));
  }
};

// Process-wide and never freed: RocksDB keeps a raw pointer to the Env of every open database.
Env* RecoverableEnv() {
  static Env* env =
      ROCKSDB_NAMESPACE::NewCompositeEnv(std::make_shared<RecoverableFs>(FileSystem::Default()))
          .release();
  return env;
}

std::once_flag registered;

// `msg` gets `s`'s text, cut to fit and NUL-terminated.
void CopyMessage(const Status& s, char* msg, size_t len) {
  if (len == 0) return;
  std::string text = s.ToString();
  size_t n = text.size() < len - 1 ? text.size() : len - 1;
  std::memcpy(msg, text.data(), n);
  msg[n] = '\0';
}

}  // namespace

// Registers the Env under "AllowlyRecoverableEnv" (once per process), so that the options
// string `env=AllowlyRecoverableEnv` selects it. Returns 0, or -1 if registration threw.
extern "C" int allowly_register_recoverable_env() noexcept {
  try {
    std::call_once(registered, [] {
      RecoverableEnv();
      ObjectLibrary::Default()->AddFactory<Env>(
          kEnvName, [](const std::string&, std::unique_ptr<Env>*, std::string*) {
            return RecoverableEnv();
          });
    });
  } catch (...) {
    return -1;
  }
  return 0;
}

// `DB::Resume()` on `db`: 0 when the database takes writes again (or never stopped), else 1 if
// the error is a full device, 2 another IO error, 3 anything else (busy, fatal), -1 if it
// threw; `msg` (of `len` bytes) gets the status text.
extern "C" int allowly_db_resume(rocksdb_t* db, char* msg, size_t len) noexcept {
  try {
    Status s = db->rep->Resume();
    if (s.ok()) return 0;
    CopyMessage(s, msg, len);
    if (s.IsNoSpace()) return 1;
    if (s.IsIOError()) return 2;
    return 3;
  } catch (...) {
    return -1;
  }
}
