# End-to-end tests of the API with the real kubectl (and plain HTTP) against the real edgevirtd.
# Each test starts its own daemon on a temp state directory, listening on 127.0.0.1 port 0 (the
# bound port comes back in the READY status on NOTIFY_SOCKET), and runs kubectl with a private
# HOME, cache directory and kubeconfig. The daemon gets a config file of its own (stateDir,
# runDir, log target in the temp directory), so no host path is touched and no mount namespace
# is needed. $EDGEVIRT_KUBECTL overrides the kubectl binary (default /usr/bin/kubectl).
foreach(test kubectl_apply_test kubectl_get_test kubectl_edit_test kubectl_invalid_test api_watch_test
             api_crash_test kubectl_service_test kubectl_auth_test)
  if(NOT EXISTS ${CMAKE_CURRENT_LIST_DIR}/${test}.cc)
    continue()
  endif()
  edgevirt_add_test(NAME ${test} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${test}.cc
    LIBS edgevirt_common nlohmann_json::nlohmann_json yaml-cpp Threads::Threads
    LABELS integration TIMEOUT 120)
  target_compile_definitions(${test} PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>")
  add_dependencies(${test} edgevirtd)
endforeach()

# PersistentVolumeClaims: the claims controller with the real qemu-img and a loop device as a
# `devices` class (root: losetup); VMs disabled.
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/kubectl_pvc_test.cc)
  edgevirt_add_test(NAME kubectl_pvc_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/kubectl_pvc_test.cc
    LIBS edgevirt_common nlohmann_json::nlohmann_json yaml-cpp Threads::Threads
    LABELS integration TIMEOUT 300)
  target_compile_definitions(kubectl_pvc_test PRIVATE EDGEVIRTD_PATH="$<TARGET_FILE:edgevirtd>")
  add_dependencies(kubectl_pvc_test edgevirtd)
endif()
