# Integration tests of vmm/ against libvirt's real QEMU driver (embedded) and a real guest.
# The test guest (tests/fixtures/guest) is built once per ctest run by a FIXTURES_SETUP test
# into the build dir, and reused while its build script is unchanged.
set(EDGEVIRT_GUEST_DIR ${PROJECT_BINARY_DIR}/tests/fixtures/guest)
add_test(NAME vmm_guest_image
  COMMAND ${PROJECT_SOURCE_DIR}/tests/fixtures/guest/build-test-guest.sh ${EDGEVIRT_GUEST_DIR})
set_tests_properties(vmm_guest_image PROPERTIES
  FIXTURES_SETUP edgevirt_test_guest LABELS integration TIMEOUT 600 RUN_SERIAL TRUE)

# Boots the guest several times under TCG (tens of seconds each on a loaded machine).
edgevirt_add_test(NAME vmm_lifecycle_test SOURCES vmm_lifecycle_test.cc LIBS edgevirt_vmm
  LABELS integration TIMEOUT 1800 RUN_SERIAL)
target_compile_definitions(vmm_lifecycle_test PRIVATE EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
set_tests_properties(vmm_lifecycle_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# Disk hotplug into one running test guest (scsi file, virtio loop device and file, detach):
# one boot, then seconds per step under TCG. Needs root (loop devices).
edgevirt_add_test(NAME vmm_hotplug_test SOURCES vmm_hotplug_test.cc
  LIBS edgevirt_vmm nlohmann_json::nlohmann_json LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(vmm_hotplug_test PRIVATE EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
set_tests_properties(vmm_hotplug_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# The serial console through a libvirt stream (boot output, a shell command, back-pressure, a
# second session taking over) and a screenshot as PNG: one boot of the test guest.
edgevirt_add_test(NAME vmm_console_test SOURCES vmm_console_test.cc LIBS edgevirt_vmm
  LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(vmm_console_test PRIVATE EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
set_tests_properties(vmm_console_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# Safety net: a test killed by CTest (timeout) cannot run its own cleanup.
add_test(NAME vmm_reap_qemu COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/vmm_reap_qemu.sh ${PROJECT_BINARY_DIR})
set_tests_properties(vmm_reap_qemu PROPERTIES
  FIXTURES_CLEANUP edgevirt_test_guest LABELS integration TIMEOUT 60 RUN_SERIAL TRUE)

# daemon/vmi_domain end to end: an admitted VMI planned, its files prepared, booted through
# vmm::Hypervisor; the guest reads both cloud-init seeds.
edgevirt_add_test(NAME daemon_vmi_boot_test
  SOURCES daemon_vmi_boot_test.cc ${PROJECT_SOURCE_DIR}/api/kubevirt/yaml_json.cc
  LIBS edgevirt_daemon_lib yaml-cpp LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(daemon_vmi_boot_test PRIVATE EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
set_tests_properties(daemon_vmi_boot_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# The daemon end to end: VirtualMachines booting the test guest through edgevirtd's controller
# (runStrategy, virtctl's subresource requests, graceful stop, kill -9 recovery).
edgevirt_add_test(NAME vm_lifecycle_test SOURCES vm_lifecycle_test.cc
  LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 1800 RUN_SERIAL)
target_compile_definitions(vm_lifecycle_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
add_dependencies(vm_lifecycle_test edgevirtd)
set_tests_properties(vm_lifecycle_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

edgevirt_add_test(NAME vm_devices_test SOURCES vm_devices_test.cc
  LIBS edgevirt_cgroup edgevirt_store edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 1200 RUN_SERIAL)
target_compile_definitions(vm_devices_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
add_dependencies(vm_devices_test edgevirtd)
set_tests_properties(vm_devices_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# containerDisks end to end: images pushed to a real registry (docker-registry on loopback) with
# skopeo, pulled, validated and booted; pull errors and pull secrets; import on an air-gapped
# host; a daemon killed in the middle of a 2 GiB blob.
edgevirt_add_test(NAME vm_containerdisk_test SOURCES vm_containerdisk_test.cc
  LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 1200 RUN_SERIAL)
target_compile_definitions(vm_containerdisk_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
add_dependencies(vm_containerdisk_test edgevirtd)
set_tests_properties(vm_containerdisk_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# Networking end to end, in the test's own network namespaces: DHCP on the default network,
# masquerade and bridge bindings, VM to VM, a second NIC on a host bridge with its own DHCP,
# NodePort and ClusterIP Services, kill -9 + restart, deletion.
edgevirt_add_test(NAME vm_network_test SOURCES vm_network_test.cc
  LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(vm_network_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
add_dependencies(vm_network_test edgevirtd)
set_tests_properties(vm_network_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# virtctl console, vnc, vnc/screenshot and port-forward through the daemon, over WebSockets.
edgevirt_add_test(NAME vm_streams_test SOURCES vm_streams_test.cc
  LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(vm_streams_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}")
add_dependencies(vm_streams_test edgevirtd)
set_tests_properties(vm_streams_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)

# virtctl ssh --local-ssh through the daemon: the real OpenSSH client whose ProxyCommand is
# virtctl_pf_stdio (virtctl port-forward --stdio=true), dropbear in the guest with the key from
# cloud-init user data.
add_executable(virtctl_pf_stdio ${PROJECT_SOURCE_DIR}/tests/support/virtctl_pf_stdio.cc)
target_include_directories(virtctl_pf_stdio PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(virtctl_pf_stdio PRIVATE Threads::Threads)
edgevirt_add_test(NAME vm_ssh_test SOURCES vm_ssh_test.cc
  LIBS edgevirt_common nlohmann_json::nlohmann_json Threads::Threads
  LABELS integration TIMEOUT 900 RUN_SERIAL)
target_compile_definitions(vm_ssh_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>"
  EDGEVIRT_GUEST_DIR="${EDGEVIRT_GUEST_DIR}"
  VIRTCTL_PF_STDIO_PATH="$<TARGET_FILE:virtctl_pf_stdio>")
add_dependencies(vm_ssh_test edgevirtd virtctl_pf_stdio)
set_tests_properties(vm_ssh_test PROPERTIES FIXTURES_REQUIRED edgevirt_test_guest)
