// Test-only: an api::Stream whose device is in memory, for the WebSocket tests of api/ (the
// server and the subresources). The test plays the device: Emit queues bytes towards the client
// (delivered by the stream's own thread, honouring on_data's false until Resume), End ends it,
// and what the client writes lands in a bounded buffer the test reads with Take (which makes
// room and calls on_writable). Echo mode sends every Write straight back.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "api/stream.h"

namespace edgevirt::api::testing {

class PipeStream final : public Stream {
 public:
  // `write_capacity`: the bytes Write accepts before Take; Write refuses what would not fit.
  explicit PipeStream(size_t write_capacity = 1 << 20, bool echo = false)
      : capacity_(write_capacity), echo_(echo) {}
  ~PipeStream() override {
    Close();
    if (thread_.joinable()) thread_.join();
  }

  void Start(std::function<bool(std::string_view)> on_data,
             std::function<void(std::string)> on_end) override {
    std::lock_guard lock(mu_);
    on_data_ = std::move(on_data);
    on_end_ = std::move(on_end);
    started_ = true;
    thread_ = std::thread([this] { Run(); });
    cv_.notify_all();
  }
  void Resume() override {
    std::lock_guard lock(mu_);
    paused_ = false;
    ++resumes_;
    cv_.notify_all();
  }
  bool Write(std::string_view bytes) override {
    std::lock_guard lock(mu_);
    if (closed_) return false;
    if (echo_) {
      out_.push_back(Item{std::string(bytes), std::nullopt});
      cv_.notify_all();
      return true;
    }
    if (bytes.size() > capacity_ - std::min(capacity_, buffered_)) {
      ++refusals_;
      return false;
    }
    buffered_ += bytes.size();
    received_.emplace_back(bytes);
    cv_.notify_all();
    return true;
  }
  void OnWritable(std::function<void()> on_writable) override {
    std::lock_guard lock(mu_);
    on_writable_ = std::move(on_writable);
  }
  void Close() override {
    std::lock_guard lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

  // --- the test's side (the device) ---
  void Emit(std::string bytes) {
    std::lock_guard lock(mu_);
    out_.push_back(Item{std::move(bytes), std::nullopt});
    cv_.notify_all();
  }
  void End(std::string reason) {
    std::lock_guard lock(mu_);
    out_.push_back(Item{"", std::move(reason)});
    cv_.notify_all();
  }
  // Everything written so far, one entry per Write; makes room and calls on_writable.
  std::vector<std::string> Take() {
    std::vector<std::string> got;
    std::function<void()> cb;
    {
      std::lock_guard lock(mu_);
      got.assign(received_.begin(), received_.end());
      received_.clear();
      buffered_ = 0;
      cb = on_writable_;
    }
    if (cb) cb();
    return got;
  }
  // Waits until `n` writes arrived (without taking them); false on timeout.
  bool WaitWrites(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return received_.size() >= n; });
  }
  bool WaitClosed(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return closed_; });
  }
  // Waits until the stream is paused by on_data returning false.
  bool WaitPaused(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return paused_; });
  }
  bool closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }
  bool paused() const {
    std::lock_guard lock(mu_);
    return paused_;
  }
  int resumes() const {
    std::lock_guard lock(mu_);
    return resumes_;
  }
  int refusals() const {
    std::lock_guard lock(mu_);
    return refusals_;
  }
  size_t pending_emits() const {
    std::lock_guard lock(mu_);
    return out_.size();
  }
  bool started() const {
    std::lock_guard lock(mu_);
    return started_;
  }

 private:
  struct Item {
    std::string data;
    std::optional<std::string> end;
  };

  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return closed_ || (!paused_ && !out_.empty()); });
      if (closed_) return;
      Item item = std::move(out_.front());
      out_.pop_front();
      if (item.end) {
        auto on_end = on_end_;
        lock.unlock();
        on_end(*item.end);
        return;
      }
      auto on_data = on_data_;
      const int resumes_before = resumes_;
      lock.unlock();
      const bool more = on_data(item.data);
      lock.lock();
      // A Resume that raced with this call (made after on_data decided to return false) wins.
      if (!more && resumes_ == resumes_before) {
        paused_ = true;
        cv_.notify_all();
      }
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  const size_t capacity_;
  const bool echo_;
  std::function<bool(std::string_view)> on_data_;
  std::function<void(std::string)> on_end_;
  std::function<void()> on_writable_;
  std::deque<Item> out_;
  std::deque<std::string> received_;
  size_t buffered_ = 0;
  bool started_ = false;
  bool paused_ = false;
  bool closed_ = false;
  int resumes_ = 0;
  int refusals_ = 0;
  std::thread thread_;
};

}  // namespace edgevirt::api::testing
