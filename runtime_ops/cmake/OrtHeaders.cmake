# Locate the ONNX Runtime C/C++ API headers.
#
# The onnxruntime Python wheel ships no headers. Debian trixie's libonnxruntime-dev carries the
# ORT 1.21 headers; the C API is ABI-stable (a library built against API 21 runs on the 1.31/1.32
# wheels). We download that .deb with apt-get against a trixie source list kept in the build
# folder and unpack it with dpkg -x: nothing is installed into the system.
#
# Set ORT_INCLUDE_DIR to use headers you already have (the folder holding onnxruntime_c_api.h).

set(ORT_DEB_PACKAGE "libonnxruntime-dev" CACHE STRING "Debian package with the ORT headers")
set(ORT_DEB_SUITE "trixie" CACHE STRING "Debian suite to take it from")

if(NOT ORT_INCLUDE_DIR)
  set(_ort_root "${CMAKE_BINARY_DIR}/ort-headers")
  set(_ort_inc "${_ort_root}/x/usr/include/onnxruntime")
  if(NOT EXISTS "${_ort_inc}/onnxruntime_c_api.h")
    find_program(APT_GET apt-get)
    find_program(DPKG dpkg)
    if(NOT APT_GET OR NOT DPKG)
      message(FATAL_ERROR "ONNX Runtime headers: apt-get/dpkg not found. Set -DORT_INCLUDE_DIR=<folder with onnxruntime_c_api.h>.")
    endif()
    file(MAKE_DIRECTORY "${_ort_root}/lists/partial" "${_ort_root}/cache/archives/partial" "${_ort_root}/etc")
    file(WRITE "${_ort_root}/etc/sources.list" "deb http://deb.debian.org/debian ${ORT_DEB_SUITE} main\n")
    set(_apt_opts
      -o "Dir::Etc::SourceList=${_ort_root}/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=${_ort_root}/lists" -o "Dir::Cache=${_ort_root}/cache"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "APT::Architecture=amd64"
      -o "APT::Architectures=amd64")
    message(STATUS "ONNX Runtime headers: downloading ${ORT_DEB_PACKAGE} from Debian ${ORT_DEB_SUITE}")
    execute_process(COMMAND ${APT_GET} ${_apt_opts} -qq update
                    RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "ONNX Runtime headers: apt-get update for ${ORT_DEB_SUITE} failed: ${_err}\nSet -DORT_INCLUDE_DIR instead.")
    endif()
    execute_process(COMMAND ${APT_GET} ${_apt_opts} -qq download ${ORT_DEB_PACKAGE}
                    WORKING_DIRECTORY "${_ort_root}" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_VARIABLE _err)
    file(GLOB _debs "${_ort_root}/${ORT_DEB_PACKAGE}_*.deb")
    if(NOT _rc EQUAL 0 OR NOT _debs)
      message(FATAL_ERROR "ONNX Runtime headers: apt-get download ${ORT_DEB_PACKAGE} failed: ${_err}")
    endif()
    list(GET _debs 0 _deb)
    execute_process(COMMAND ${DPKG} -x "${_deb}" "${_ort_root}/x" RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0 OR NOT EXISTS "${_ort_inc}/onnxruntime_c_api.h")
      message(FATAL_ERROR "ONNX Runtime headers: unpacking ${_deb} failed")
    endif()
  endif()
  set(ORT_INCLUDE_DIR "${_ort_inc}" CACHE PATH "Folder with onnxruntime_c_api.h" FORCE)
endif()

if(NOT EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_c_api.h")
  message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} has no onnxruntime_c_api.h")
endif()
message(STATUS "ONNX Runtime headers: ${ORT_INCLUDE_DIR}")
