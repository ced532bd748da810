// An SST partitioner for key spaces made of append-only streams (see `src/partitioner.rs` for
// why it exists and what it buys). Compiled by build.rs against the headers of the RocksDB that
// librocksdb-sys links, and registered in RocksDB's object library so that an options string can
// name it: the Rust crate exposes no setter for `sst_partitioner_factory`.
//
// A key's stream is the key without its last 8 bytes (every key in the spaces that use this is
// `prefix ‖ u64 BE`, the u64 growing within its prefix); keys shorter than 8 bytes are a stream
// each. Output files are cut between two streams once they hold `min_file_bytes`.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "rocksdb/slice.h"
#include "rocksdb/sst_partitioner.h"
#include "rocksdb/utilities/object_registry.h"

namespace {

using ROCKSDB_NAMESPACE::ObjectLibrary;
using ROCKSDB_NAMESPACE::PartitionerRequest;
using ROCKSDB_NAMESPACE::PartitionerResult;
using ROCKSDB_NAMESPACE::Slice;
using ROCKSDB_NAMESPACE::SstPartitioner;
using ROCKSDB_NAMESPACE::SstPartitionerFactory;

constexpr const char* kName = "AllowlyStreamPartitioner";

bool SameStream(const Slice& a, const Slice& b) {
  if (a.size() != b.size()) return false;
  const size_t n = a.size() >= 8 ? a.size() - 8 : a.size();
  return Slice(a.data(), n).compare(Slice(b.data(), n)) == 0;
}

class StreamPartitioner final : public SstPartitioner {
 public:
  explicit StreamPartitioner(uint64_t min_file_bytes) : min_(min_file_bytes) {}
  const char* Name() const override { return kName; }
  PartitionerResult ShouldPartition(const PartitionerRequest& r) override {
    if (r.current_output_file_size < min_) return ROCKSDB_NAMESPACE::kNotRequired;
    return SameStream(*r.prev_user_key, *r.current_user_key) ? ROCKSDB_NAMESPACE::kNotRequired
                                                             : ROCKSDB_NAMESPACE::kRequired;
  }
  // No veto: RocksDB moves a file down without rewriting it only when nothing below overlaps
  // it, which it checks itself.
  bool CanDoTrivialMove(const Slice&, const Slice&) override { return true; }

 private:
  uint64_t min_;
};

class StreamPartitionerFactory final : public SstPartitionerFactory {
 public:
  explicit StreamPartitionerFactory(uint64_t min_file_bytes) : min_(min_file_bytes) {}
  const char* Name() const override { return kName; }
  std::unique_ptr<SstPartitioner> CreatePartitioner(const SstPartitioner::Context&) const override {
    return std::unique_ptr<SstPartitioner>(new StreamPartitioner(min_));
  }

 private:
  uint64_t min_;
};

std::once_flag registered;
uint64_t registered_min = 0;

}  // namespace

// Registers the factory under "AllowlyStreamPartitioner" once per process (later calls keep the
// first minimum) and stores the minimum in force in `*in_force`. Returns 0, or -1 if
// registration threw (no C++ exception may cross into Rust). C linkage: called from Rust.
extern "C" int allowly_register_stream_partitioner(uint64_t min_file_bytes,
                                                   uint64_t* in_force) noexcept {
  try {
    std::call_once(registered, [min_file_bytes] {
      ObjectLibrary::Default()->AddFactory<SstPartitionerFactory>(
          kName, [min_file_bytes](const std::string&,
                                  std::unique_ptr<SstPartitionerFactory>* guard, std::string*) {
            guard->reset(new StreamPartitionerFactory(min_file_bytes));
            return guard->get();
          });
      registered_min = min_file_bytes;
    });
  } catch (...) {
    return -1;
  }
  *in_force = registered_min;
  return 0;
}
