// `virtctl ssh --local-ssh` through the real edgevirtd: the real OpenSSH client, its
// ProxyCommand the stdio port-forward (tests/support/virtctl_pf_stdio, standing in for
// `virtctl port-forward --stdio=true vmi/NAME.NAMESPACE 22`), the WebSocket port-forward
// subresource, the daemon's TCP connection to the VMI, and dropbear in the test guest, whose
// root key comes from the VM's cloud-init user data (ssh_authorized_keys) as an operator puts it
// there. Checked: a command's output, the guest's host key against the one its image was built
// with, a refused key, a PTY session, 1 MiB each way through the SSH channel (flow control
// across ssh, the WebSocket, the daemon and the guest), both the vm/ and vmi/ targets, the error
// a missing VMI gives, and the stdio tool alone (it ends with either side).
#include <random>

#include "tests/integration/daemon_test_util.h"
#include "tests/integration/vm_test_util.h"

namespace edgevirt::testing {
namespace {

using namespace std::chrono_literals;

struct SshResult {
  int code = -1;
  std::string out;
  std::string err;
};

// An ssh client run as `virtctl ssh --local-ssh` runs it (argv, no shell of ours; ssh itself
// runs the ProxyCommand line with /bin/sh, as it does for virtctl).
class SshClient {
 public:
  SshClient(std::filesystem::path dir, std::string server)
      : dir_(std::move(dir)), server_(std::move(server)) {}

  SshResult Run(const std::string& target, const std::filesystem::path& key,
                const std::vector<std::string>& options, const std::string& command,
                const std::filesystem::path& stdin_path = "/dev/null",
                std::chrono::milliseconds timeout = 120s) {
    std::vector<std::string> argv = {
        "/usr/bin/ssh",
        "-F",
        "/dev/null",  // no user or system configuration
        "-o",
        "ProxyCommand=" + std::string(VIRTCTL_PF_STDIO_PATH) + " --server=" + server_ +
            " port-forward --stdio=true " + target + " 22",
        "-i",
        key.string(),
        "-o",
        "IdentitiesOnly=yes",  // only this key, none from an agent or ~/.ssh
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=60"};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back("root@" + target);
    argv.push_back(command);
    Child ssh(argv, {}, dir_, "ssh" + std::to_string(++runs_), stdin_path);
    auto code = ssh.Wait(timeout);
    SshResult r;
    r.code = code ? *code : -1;
    r.out = ssh.Stdout();
    r.err = ssh.Stderr();
    return r;
  }

 private:
  std::filesystem::path dir_;
  std::string server_;
  int runs_ = 0;
};

const std::vector<std::string> kNoHostKeyCheck = {"-o", "StrictHostKeyChecking=no", "-o",
                                                  "UserKnownHostsFile=/dev/null"};

std::filesystem::path NewKey(const TempDir& tmp, const std::string& name) {
  auto key = tmp / name;
  auto [code, out] = RunCommand(
      {"/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key.string()},
      tmp.path());
  REQUIRE(code == 0);
  return key;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

TEST_CASE("virtctl ssh --local-ssh: OpenSSH through the port-forward subresource to the guest") {
  VmEnv env("vm-ssh");
  const auto key = NewKey(env.tmp, "id_operator");
  const auto wrong_key = NewKey(env.tmp, "id_stranger");
  const std::string pub = Trim(ReadFile(key.string() + ".pub"));
  SshClient ssh(env.tmp.path(), env.daemon.url());

  // Before the VMI exists the port-forward is refused and ssh says so.
  {
    auto r = ssh.Run("vmi/nosuch.default", key, kNoHostKeyCheck, "true", "/dev/null", 60s);
    INFO(r.err);
    CHECK(r.code == 255);
    CHECK(r.err.find("HTTP 404") != std::string::npos);
  }

  // The operator's key goes in as cloud-init user data, as on a KubeVirt cluster.
  const std::string user_data = "#cloud-config\nssh_authorized_keys:\n  - " + pub + "\n";
  env.Create(env.VmManifest("ssh1", "Always", user_data));
  REQUIRE(env.WaitPhase("ssh1", "Running", 300s));
  const std::string uid = env.Vmi("ssh1")["metadata"]["uid"];
  REQUIRE(env.WaitSerial(uid, "EDGE-GUEST-BOOTED", 1, 300s));
  REQUIRE(env.WaitSerial(uid, "SSH-KEYS:1", 1, 60s));
  REQUIRE(env.WaitSerial(uid, "DHCP:eth0:", 1, 120s));

  // A command, as `virtctl ssh --local-ssh -c CMD root@vmi/ssh1.default` runs it. dropbear
  // starts a moment after DHCP: retry while the connection itself fails (255) for a while.
  SshResult first;
  const auto deadline = Clock::now() + 120s;
  do {
    first = ssh.Run("vmi/ssh1.default", key, kNoHostKeyCheck, "echo SSH-OK-$(hostname)");
    if (first.code == 0) break;
    std::this_thread::sleep_for(2s);
  } while (Clock::now() < deadline);
  {
    INFO("ssh stderr: " << first.err << "\nserial: " << env.SerialLog(uid));
    REQUIRE(first.code == 0);
  }
  CHECK(first.out == "SSH-OK-edge-guest\n");
  CHECK(env.WaitSerial(uid, "Pubkey auth succeeded for 'root'", 1, 10s));

  // The VM target (virtctl ssh vm/NAME) reaches the same guest.
  {
    auto r = ssh.Run("vm/ssh1.default", key, kNoHostKeyCheck, "echo VM-TARGET-$((6*7))");
    INFO(r.err);
    CHECK(r.code == 0);
    CHECK(r.out == "VM-TARGET-42\n");
  }

  // The host key is the guest image's own: strict checking against the key the build wrote.
  {
    const auto known_hosts = env.tmp / "known_hosts";
    WriteFile(known_hosts,
              "edge-guest " + Trim(ReadFile(GuestDir() / "ssh_host_ed25519_key.pub")) + "\n");
    auto r =
        ssh.Run("vmi/ssh1.default", key,
                {"-o", "StrictHostKeyChecking=yes", "-o",
                 "UserKnownHostsFile=" + known_hosts.string(), "-o", "HostKeyAlias=edge-guest"},
                "echo STRICT-OK");
    INFO(r.err);
    CHECK(r.code == 0);
    CHECK(r.out == "STRICT-OK\n");
    // And a different key under that name is refused before any login.
    const auto other = NewKey(env.tmp, "id_other_host");
    WriteFile(known_hosts, "edge-guest " + Trim(ReadFile(other.string() + ".pub")) + "\n");
    r = ssh.Run("vmi/ssh1.default", key,
                {"-o", "StrictHostKeyChecking=yes", "-o",
                 "UserKnownHostsFile=" + known_hosts.string(), "-o", "HostKeyAlias=edge-guest"},
                "echo MUST-NOT-RUN");
    INFO(r.err);
    CHECK(r.code == 255);
    CHECK(r.out.find("MUST-NOT-RUN") == std::string::npos);
    CHECK(r.err.find("Host key verification failed") != std::string::npos);
  }

  // A key the guest was not given is refused.
  {
    auto r = ssh.Run("vmi/ssh1.default", wrong_key, kNoHostKeyCheck, "echo MUST-NOT-RUN");
    INFO(r.err);
    CHECK(r.code == 255);
    CHECK(r.out.find("MUST-NOT-RUN") == std::string::npos);
    CHECK(r.err.find("Permission denied (publickey)") != std::string::npos);
  }

  // An interactive session gets a PTY (what plain `virtctl ssh root@vmi/ssh1` opens).
  {
    std::vector<std::string> opts = kNoHostKeyCheck;
    opts.push_back("-tt");
    auto r = ssh.Run("vmi/ssh1.default", key, opts, "tty");
    INFO(r.err);
    CHECK(r.code == 0);
    CHECK(r.out.find("/dev/pts/") != std::string::npos);
  }

  // The stdio port-forward alone, as `virtctl port-forward --stdio=true` runs under other tools,
  // its stdout a regular file. It ends with the server's side: the guest's HTTP server answers
  // a request written into its stdin (a FIFO the test keeps open) and closes the connection.
  {
    const auto fifo = env.tmp / "pf-http-stdin";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    UniqueFd writer(::open(fifo.c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(writer.valid());
    Child pf({VIRTCTL_PF_STDIO_PATH, "--server=" + env.daemon.url(), "port-forward", "--stdio=true",
              "vmi/ssh1.default", "80"},
             {}, env.tmp.path(), "pf-http", fifo);
    const std::string request = "GET / HTTP/1.0\r\n\r\n";
    REQUIRE(::write(writer.get(), request.data(), request.size()) ==
            static_cast<ssize_t>(request.size()));
    auto code = pf.Wait(60s);
    INFO(pf.Stderr());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(pf.Stdout().rfind("HTTP/1.", 0) == 0);
    CHECK(pf.Stdout().find(" 200 OK") != std::string::npos);
    CHECK(pf.Stdout().find("edge-guest") != std::string::npos);
  }
  // And with its stdin: dropbear's banner arrives, the connection stays open (dropbear waits for
  // the client's), and the end of stdin ends the stream.
  {
    const auto fifo = env.tmp / "pf-ssh-stdin";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    UniqueFd writer(::open(fifo.c_str(), O_RDWR | O_CLOEXEC));
    REQUIRE(writer.valid());
    Child pf({VIRTCTL_PF_STDIO_PATH, "--server=" + env.daemon.url(), "port-forward", "--stdio=true",
              "vmi/ssh1.default", "tcp/2222:22"},
             {}, env.tmp.path(), "pf-ssh", fifo);
    CHECK(
        WaitUntil([&] { return pf.Stdout().find("SSH-2.0-dropbear") != std::string::npos; }, 60s));
    std::this_thread::sleep_for(1s);
    CHECK(pf.Running());
    writer.reset();
    auto code = pf.Wait(30s);
    INFO(pf.Stderr());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
  }

  // stdin /dev/null (not pollable: relayed through a pipe) ends the stream at once.
  {
    Child pf({VIRTCTL_PF_STDIO_PATH, "--server=" + env.daemon.url(), "port-forward", "--stdio=true",
              "vmi/ssh1.default", "22"},
             {}, env.tmp.path(), "pf-null");
    auto code = pf.Wait(30s);
    INFO(pf.Stderr());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
  }

  // 1 MiB of random bytes up and back down: more than every window and buffer on the way.
  std::string blob(1 << 20, '\0');
  std::mt19937 rng(20261128);
  for (auto& c : blob) c = static_cast<char>(rng() & 0xff);
  const auto blob_path = env.tmp / "blob";
  WriteFile(blob_path, blob);
  auto [md5_code, md5_out] = RunCommand({"/usr/bin/md5sum", blob_path.string()}, env.tmp.path());
  REQUIRE(md5_code == 0);
  const std::string md5 = md5_out.substr(0, 32);
  {
    const auto start = Clock::now();
    auto up = ssh.Run("vmi/ssh1.default", key, kNoHostKeyCheck,
                      "cat > /tmp/blob && wc -c < /tmp/blob && md5sum /tmp/blob", blob_path, 300s);
    const auto up_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    INFO(up.err);
    REQUIRE(up.code == 0);
    CHECK(up.out == "1048576\n" + md5 + "  /tmp/blob\n");
    WARN("1 MiB up through ssh in " << up_ms.count() << " ms");
  }
  {
    const auto start = Clock::now();
    auto down =
        ssh.Run("vmi/ssh1.default", key, kNoHostKeyCheck, "cat /tmp/blob", "/dev/null", 300s);
    const auto down_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    INFO(down.err);
    REQUIRE(down.code == 0);
    CHECK(down.out.size() == blob.size());
    CHECK(down.out == blob);
    WARN("1 MiB down through ssh in " << down_ms.count() << " ms");
  }
}

}  // namespace
}  // namespace edgevirt::testing
