// The child of store_crash_test: opens the store and writes from kThreads threads until it is
// killed, reporting every acknowledged write on fd kAckFd (see store_crash_protocol.h).
//
//   store_crash_writer <dir> <iteration>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "store/store.h"
#include "tests/integration/store_crash_protocol.h"

namespace edgevirt::store::crash {
namespace {

void Send(const Ack& ack) {
  for (;;) {
    ssize_t n = ::write(kAckFd, &ack, sizeof(ack));
    if (n == static_cast<ssize_t>(sizeof(ack))) return;
    if (n < 0 && errno == EINTR) continue;
    std::_Exit(3);  // the parent is gone or the pipe broke: nothing left to prove
  }
}

[[noreturn]] void Fail(uint32_t iter, uint8_t thread, const std::string& what) {
  std::fprintf(stderr, "store_crash_writer: thread %u: %s\n", thread, what.c_str());
  Ack ack;
  ack.op = static_cast<uint8_t>(AckOp::kError);
  ack.iter = iter;
  ack.thread = thread;
  Send(ack);
  std::_Exit(2);
}

void Ack1(AckOp op, uint32_t iter, uint8_t thread, uint32_t seq, uint64_t rv, uint64_t value) {
  Ack ack;
  ack.op = static_cast<uint8_t>(op);
  ack.iter = iter;
  ack.thread = thread;
  ack.seq = seq;
  ack.rv = rv;
  ack.value = value;
  Send(ack);
}

void Writer(Store* store, uint32_t iter, uint8_t t) {
  // Continue the per-thread counters from whatever the last run made durable.
  ObjectKey counter_key = Key("CrashCounter", CounterName(t));
  uint64_t counter = 0;
  uint64_t counter_rv = 0;
  if (auto got = store->Get(counter_key)) {
    counter = std::stoull(got->data) + 1;
    counter_rv = got->resource_version;
  } else if (got.error().code != Code::kNotFound) {
    Fail(iter, t, "get counter: " + got.error().ToString());
  }
  uint64_t raw_counter = 0;
  if (auto got = store->GetRaw(kRawSpace, RawCounterName(t))) {
    raw_counter = std::stoull(*got) + 1;
  } else if (got.error().code != Code::kNotFound) {
    Fail(iter, t, "get raw counter: " + got.error().ToString());
  }

  // Bounded so that a very fast disk cannot grow the parent's per-kill checks without limit;
  // the parent kills within 50 ms, long before this budget runs out on ordinary disks.
  for (uint32_t seq = 0; seq < kMaxOpsPerThread; ++seq) {
    switch (seq % 5) {
      case 0: {
        std::string name = Name('u', iter, t, seq);
        auto r = store->Create(Key("CrashU", name), Body(name, seq));
        if (!r) Fail(iter, t, "create " + name + ": " + r.error().ToString());
        Ack1(AckOp::kCreateU, iter, t, seq, r->resource_version, 0);
        break;
      }
      case 1: {
        auto r = counter_rv == 0
                     ? store->Create(counter_key, std::to_string(counter))
                     : store->Update(counter_key, std::to_string(counter), counter_rv, true);
        if (!r) Fail(iter, t, "write counter: " + r.error().ToString());
        Ack1(AckOp::kCounter, iter, t, seq, r->resource_version, counter);
        counter_rv = r->resource_version;
        ++counter;
        break;
      }
      case 2: {
        std::string name = Name('d', iter, t, seq);
        auto c = store->Create(Key("CrashD", name), Body(name, seq));
        if (!c) Fail(iter, t, "create " + name + ": " + c.error().ToString());
        Ack1(AckOp::kCreateD, iter, t, seq, c->resource_version, 0);
        auto d = store->Delete(Key("CrashD", name), c->resource_version, c->uid);
        if (!d) Fail(iter, t, "delete " + name + ": " + d.error().ToString());
        Ack1(AckOp::kDeleteD, iter, t, seq, d->resource_version, 0);
        break;
      }
      case 3: {
        auto p = store->PutRaw(kRawSpace, RawCounterName(t), std::to_string(raw_counter));
        if (!p) Fail(iter, t, "put raw counter: " + p.error().ToString());
        Ack1(AckOp::kRawCounter, iter, t, seq, 0, raw_counter);
        ++raw_counter;
        std::string name = Name('v', iter, t, seq);
        auto u = store->PutRaw(kRawSpace, name, Body(name, seq));
        if (!u) Fail(iter, t, "put raw " + name + ": " + u.error().ToString());
        Ack1(AckOp::kRawU, iter, t, seq, 0, 0);
        break;
      }
      case 4: {
        std::string name = Name('a', iter, t, seq);
        std::vector<Mutation> ms(2);
        for (int i = 0; i < 2; ++i) {
          ms[i].op = Mutation::Op::kCreate;
          ms[i].key = Key("CrashA", name + "-" + std::to_string(i));
          ms[i].data = Body(name, seq + i);
        }
        auto r = store->Apply(std::move(ms));
        if (!r) Fail(iter, t, "apply " + name + ": " + r.error().ToString());
        if (r->size() != 2 || (*r)[1].resource_version != (*r)[0].resource_version + 1) {
          Fail(iter, t, "apply " + name + ": bad records");
        }
        Ack1(AckOp::kApply, iter, t, seq, (*r)[0].resource_version, 0);
        break;
      }
    }
  }
}

}  // namespace
}  // namespace edgevirt::store::crash

int main(int argc, char** argv) {
  using namespace edgevirt::store::crash;
  if (argc != 3) {
    std::fprintf(stderr, "usage: store_crash_writer <dir> <iteration>\n");
    return 64;
  }
  edgevirt::log::Configure(edgevirt::log::Level::kWarning, edgevirt::log::Target::kStderr);
  const uint32_t iter = static_cast<uint32_t>(std::stoul(argv[2]));
  auto store = edgevirt::store::Store::Open(CrashOptions(argv[1]));
  if (!store) Fail(iter, 255, "open: " + store.error().ToString());
  Ack ready;
  ready.op = static_cast<uint8_t>(AckOp::kReady);
  ready.iter = iter;
  Send(ready);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] { Writer(store->get(), iter, static_cast<uint8_t>(t)); });
  }
  // The parent kills us within a few hundred ms; never outlive a parent that forgot to.
  std::this_thread::sleep_for(std::chrono::seconds(30));
  std::_Exit(4);
}
