# store/ crash-consistency test: a child writer is SIGKILLed hundreds of times on one LMDB
# environment; after each kill the parent reopens the store and checks every acknowledged write.
add_executable(store_crash_writer ${CMAKE_CURRENT_LIST_DIR}/store_crash_writer.cc)
target_link_libraries(store_crash_writer PRIVATE edgevirt_store)
target_include_directories(store_crash_writer PRIVATE ${PROJECT_SOURCE_DIR})

edgevirt_add_test(NAME store_crash_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/store_crash_test.cc
  LIBS edgevirt_store
  LABELS integration
  TIMEOUT 180)
if(TARGET store_crash_test)
  target_compile_definitions(store_crash_test PRIVATE
    STORE_CRASH_WRITER="$<TARGET_FILE:store_crash_writer>")
  add_dependencies(store_crash_test store_crash_writer)
endif()
