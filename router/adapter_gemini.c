/* placeholder: being written */
typedef int kp_placeholder_adapter_gemini;
