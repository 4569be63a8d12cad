fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Generate only the sides the enabled features ask for: the CNI builds clients alone.
    let feature = |name: &str| std::env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    tonic_prost_build::configure()
        .build_client(feature("CLIENT"))
        .build_server(feature("SERVER"))
        .compile_protos(
            &[
                "proto/deviceplugin_v1beta1.proto",
                "proto/podresources_v1.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
